"""Feed shards to long-lived RenderWorker actors, pull-style, and outlive their failures.

Each actor holds one pipeline and keeps ``INFLIGHT_PER_ACTOR`` shards in flight, run as threads
(one renders while the other reads or commits, see workers/actor.py), so the device never waits
for the driver, for Parquet or for an upload between shards; a finished shard frees a slot that
the next shard fills.

When an attempt fails on infrastructure (its actor or node died, storage timed out or answered
5xx), the shard goes back in the queue after a backoff, up to ``--max-retries`` times, and a dead
actor is replaced by a new one. A shard that fails otherwise (bad data, a bug), or runs out of
retries, gets a ``_failed/`` marker and the job goes on with the others.
"""

from __future__ import annotations

import heapq
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from jobs import resume
from jobs.cluster import actor_env
from jobs.errors import JobError
from jobs.plan import Shard
from jobs.progress import Progress, ShardOutcome
from jobs.retry import backoff_s, is_retryable
from jobs.spec import JobSpec
from jobs.storage import Folder

INFLIGHT_PER_ACTOR = 2
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the remote traceback


def actor_class(spec: JobSpec, count: int) -> Any:
    """RenderWorker as a Ray actor class with the resources one actor needs."""
    import ray

    from workers.actor import RenderWorker

    if spec.device == "cuda":
        resources = {"num_gpus": 1, "num_cpus": 1}
    else:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        resources = {"num_gpus": 0, "num_cpus": max(1, cpus // count)}  # torch uses what it asks for
    # Its in-flight shards run as threads: one renders while the other reads or commits.
    return ray.remote(RenderWorker).options(**resources, max_concurrency=INFLIGHT_PER_ACTOR,
                                            runtime_env={"env_vars": actor_env()})  # fmt: skip


def start_workers(spec: JobSpec, count: int) -> list[Any]:
    """Create ``count`` RenderWorker actors and wait until each has loaded its pipeline."""
    import ray

    cls = actor_class(spec, count)
    actors = [cls.remote(spec) for _ in range(count)]
    try:
        ray.get([a.ready.remote() for a in actors])
    except ray.exceptions.RayError as e:  # e.g. weights that pass the config check but do not load
        for actor in actors:
            ray.kill(actor)
        raise JobError(f"workers: the render actors could not start ({error_text(e)})") from None
    return actors


@dataclass(order=True)
class _Waiting:
    not_before: float
    shard: Shard = field(compare=False)


class ShardScheduler:
    """One run's scheduling state: queues, attempts per shard, live and starting actors."""

    def __init__(self, spec: JobSpec, out: Folder, progress: Progress, previously_failed: set[int]) -> None:
        self.spec, self.out, self.progress = spec, out, progress
        self.previously_failed = previously_failed
        self.ready: deque[Shard] = deque()
        self.waiting: list[_Waiting] = []  # heap: shards waiting out a retry backoff
        self.attempts: dict[int, int] = {}
        self.actors: dict[Any, Any] = {}  # actor id -> handle, for live actors
        self.busy: dict[Any, int] = {}  # actor id -> shards in flight
        self.running: dict[Any, tuple[Any, Shard]] = {}  # task ref -> (actor id, shard)
        self.starting: dict[Any, Any] = {}  # ready() ref -> replacement actor handle
        self.replacements_left = 0
        self.cls: Any = None

    def run(self, pending: list[Shard]) -> None:
        """Render every pending shard; each outcome goes to ``progress`` (and _failed/ if failed)."""
        import ray

        if not pending:
            return
        count = min(self.spec.workers or 1, len(pending))
        self.cls = actor_class(self.spec, count)
        self.replacements_left = count * (self.spec.max_retries + 1)
        for actor in start_workers(self.spec, count):
            self._add_actor(actor)
        self.ready.extend(pending)
        try:
            while self.ready or self.waiting or self.running:  # a replacement still starting is not work
                if not (self.actors or self.starting or self.running):
                    self._fail_unstarted("no render worker is left (replacements could not start)")
                    break
                self._release_waiting()
                self._submit_ready()
                refs = [*self.running, *self.starting]
                timeout = self._seconds_to_next_retry()
                done, _ = ray.wait(refs, num_returns=1, timeout=timeout) if refs else ([], time.sleep(timeout or 0))
                for ref in done:
                    if ref in self.starting:
                        self._on_replacement(ref)
                    else:
                        self._on_shard(ref)
        finally:
            for actor in [*self.actors.values(), *self.starting.values()]:
                ray.kill(actor)

    # -- queues ------------------------------------------------------------------------
    def _release_waiting(self) -> None:
        now = time.monotonic()
        while self.waiting and self.waiting[0].not_before <= now:
            self.ready.appendleft(heapq.heappop(self.waiting).shard)  # retries go first

    def _seconds_to_next_retry(self) -> float | None:
        if not self.waiting:
            return None
        return max(0.0, self.waiting[0].not_before - time.monotonic())

    def _submit_ready(self) -> None:
        while self.ready:
            free = [a for a, n in self.busy.items() if n < INFLIGHT_PER_ACTOR]
            if not free:
                return
            actor_id = min(free, key=lambda a: self.busy[a])
            shard = self.ready.popleft()
            self.attempts[shard.shard_id] = self.attempts.get(shard.shard_id, 0) + 1
            self.running[self.actors[actor_id].render_shard.remote(shard)] = (actor_id, shard)
            self.busy[actor_id] += 1

    # -- outcomes ----------------------------------------------------------------------
    def _on_shard(self, ref: Any) -> None:
        import ray

        actor_id, shard = self.running.pop(ref)
        if actor_id in self.busy:
            self.busy[actor_id] -= 1
        try:
            marker = ray.get(ref)
        except ray.exceptions.RayError as e:
            if isinstance(e, ray.exceptions.RayActorError):
                self._replace(actor_id)
            self._on_failure(shard, e)
            return
        self.progress.record(ShardOutcome(shard.shard_id, shard.num_rows, marker=marker))
        if shard.shard_id in self.previously_failed:
            resume.clear_failure(self.out, shard.shard_id)

    def _on_failure(self, shard: Shard, e: Exception) -> None:
        attempts, retryable = self.attempts[shard.shard_id], is_retryable(e)
        if retryable and attempts <= self.spec.max_retries:
            delay = backoff_s(attempts)
            self._note(f"shard {shard.shard_id}: {error_text(e)}; retry {attempts}/{self.spec.max_retries} in {delay:.0f} s")
            heapq.heappush(self.waiting, _Waiting(time.monotonic() + delay, shard))
            return
        self._record_failed(shard, error_text(e), _ANSI.sub("", str(e)), retryable)

    def _record_failed(self, shard: Shard, error: str, detail: str, retryable: bool) -> None:
        attempts = self.attempts.get(shard.shard_id, 0)
        try:
            resume.record_failure(self.out, shard, error, detail, attempts, retryable)
        except Exception as e:  # noqa: BLE001 - the shard stays pending without its marker
            self._note(f"shard {shard.shard_id}: could not write its failed marker ({error_text(e)})")
        self.progress.record(ShardOutcome(shard.shard_id, shard.num_rows, error=error, attempts=attempts))

    def _fail_unstarted(self, reason: str) -> None:
        """No actor can take work: every shard not yet rendered fails (a rerun retries them)."""
        for shard in [*self.ready, *(w.shard for w in self.waiting)]:
            self._record_failed(shard, reason, reason, retryable=True)
        self.ready.clear()
        self.waiting.clear()

    # -- actors ------------------------------------------------------------------------
    def _add_actor(self, actor: Any) -> None:
        self.actors[actor._actor_id] = actor
        self.busy[actor._actor_id] = 0

    def _replace(self, actor_id: Any) -> None:
        """A dead actor (process killed, node lost) is dropped and a new one started, once."""
        import ray

        dead = self.actors.pop(actor_id, None)
        if dead is None:
            return  # its other in-flight shard already reported the death
        self.busy.pop(actor_id, None)
        ray.kill(dead)
        if self._start_replacement():
            self._note("a render worker died; starting a replacement")

    def _start_replacement(self) -> bool:
        """Start a new actor if the replacement budget allows; False when it is spent."""
        if self.replacements_left <= 0:
            return False
        self.replacements_left -= 1
        actor = self.cls.remote(self.spec)
        self.starting[actor.ready.remote()] = actor
        return True

    def _on_replacement(self, ref: Any) -> None:
        import ray

        actor = self.starting.pop(ref)
        try:
            ray.get(ref)
        except ray.exceptions.RayError as e:
            self._note(f"a replacement render worker could not start: {error_text(e)}")
            ray.kill(actor)
            if is_retryable(e):
                self._start_replacement()
            return
        self._add_actor(actor)

    def _note(self, message: str) -> None:
        self.progress.note(f"turbobatch: {message}")


def error_text(e: BaseException) -> str:
    """One line naming the failure: the remote exception's type and message for task errors."""
    cause = getattr(e, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}".strip().splitlines()[0][:500]
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first}"[:500] if first else type(e).__name__


def render_shards(pending: list[Shard], spec: JobSpec, out: Folder, progress: Progress,
                  previously_failed: set[int] = frozenset()) -> None:  # fmt: skip
    """Render every pending shard on RenderWorker actors (see ShardScheduler)."""
    ShardScheduler(spec, out, progress, set(previously_failed)).run(pending)

