"""Feed shards to long-lived RenderWorker actors, pull-style.

Each actor holds one pipeline and keeps ``INFLIGHT_PER_ACTOR`` shards queued, so it never waits
for the driver between shards; a finished shard frees a slot that the next shard fills.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from jobs.cluster import actor_env
from jobs.errors import JobError
from jobs.plan import Shard
from jobs.progress import Progress, ShardOutcome
from jobs.spec import JobSpec

INFLIGHT_PER_ACTOR = 2


def start_workers(spec: JobSpec, count: int) -> list[Any]:
    """Create ``count`` RenderWorker actors and wait until each has loaded its pipeline."""
    import ray

    from workers.actor import RenderWorker

    if spec.device == "cuda":
        resources = {"num_gpus": 1, "num_cpus": 1}
    else:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        resources = {"num_gpus": 0, "num_cpus": max(1, cpus // count)}  # torch uses what it asks for
    actor_class = ray.remote(RenderWorker).options(**resources, runtime_env={"env_vars": actor_env()})
    actors = [actor_class.remote(spec) for _ in range(count)]
    try:
        ray.get([a.ready.remote() for a in actors])
    except ray.exceptions.RayError as e:  # e.g. weights that pass the config check but do not load
        for actor in actors:
            ray.kill(actor)
        raise JobError(f"workers: the render actors could not start ({_error_text(e)})") from None
    return actors


def render_shards(pending: list[Shard], spec: JobSpec, progress: Progress) -> None:
    """Render every pending shard; each outcome (committed or failed) goes to ``progress``."""
    import ray

    if not pending:
        return
    actors = start_workers(spec, min(spec.workers or 1, len(pending)))
    queue = deque(pending)
    inflight: dict[Any, tuple[Any, Shard]] = {}

    def submit(actor: Any) -> None:
        shard = queue.popleft()
        inflight[actor.render_shard.remote(shard)] = (actor, shard)

    for _ in range(INFLIGHT_PER_ACTOR):
        for actor in actors:
            if queue:
                submit(actor)
    while inflight:
        [ref], _ = ray.wait(list(inflight), num_returns=1)
        actor, shard = inflight.pop(ref)
        try:
            progress.record(ShardOutcome(shard.shard_id, shard.num_rows, marker=ray.get(ref)))
        except ray.exceptions.RayError as e:
            progress.record(ShardOutcome(shard.shard_id, shard.num_rows, error=_error_text(e)))
        if queue:
            submit(actor)
    for actor in actors:
        ray.kill(actor)


def _error_text(e: Exception) -> str:
    cause = getattr(e, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
