"""Join (or start) Ray and resolve what depends on the cluster: device, dtype, workers and their resources."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass

from turbobatch.errors import JobError
from turbobatch.jobs.run.local_ray import explicit_auth_mode, own_process_groups, started_here, starts_local_ray
from turbobatch.jobs.run.signals import note_sigterm, on_main_thread, sigterm_interrupts
from turbobatch.models.families import FAMILIES, check_family, with_family_defaults
from turbobatch.models.resolve import ModelInfo
from turbobatch.spec.job import JobSpec
from turbobatch.spec.resolved import ResolvedJob

# Passed to actors so that a joined cluster's workers find the same caches as the driver.
# Never a secret: runtime_env values can reach Ray's logs (credentials stay in each node's env).
FORWARDED_ENV = ("TURBOBATCH_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "TURBOBATCH_TEST_FAULTS")


@dataclass(frozen=True)
class ClusterInfo:
    gpus: int
    cpus: int
    nodes: tuple[dict[str, float], ...] = ()  # alive nodes' total resources, at start
    local: bool = False  # a Ray this process started: no node joins it, so it never grows
    node_types: tuple[dict[str, float], ...] | None = None  # what the autoscaler may add; None: unknown

    @property
    def device(self) -> str:
        return "cuda" if self.gpus else "cpu"


def cluster_info() -> ClusterInfo:
    """The cluster as it is now (call after ``ray.init``)."""
    import ray

    from turbobatch.jobs.run import nodes

    resources = ray.cluster_resources()
    types = nodes.node_types()
    return ClusterInfo(
        gpus=int(resources.get("GPU", 0)),
        cpus=int(resources.get("CPU", 0)),
        nodes=tuple(nodes.alive_nodes().values()),
        local=started_here(),
        node_types=None if types is None else tuple(types),
    )


@contextlib.contextmanager
def ray_session() -> Iterator[ClusterInfo]:
    """``ray.init()`` honours RAY_ADDRESS (and a ``ray start`` cluster of this machine); a Ray started here
    is shut down on exit, also when SIGTERM or Ctrl-C arrive during ``ray.init`` itself."""
    import ray

    if ray.is_initialized():  # the caller's Ray (tests): theirs to shut down
        with sigterm_interrupts():
            yield cluster_info()
        return
    with contextlib.ExitStack() as stack:
        local = starts_local_ray()
        if local:
            stack.enter_context(explicit_auth_mode())
        stack.callback(ray.shutdown)  # runs before the auth mode is restored
        _init_ray(local)
        stack.enter_context(sigterm_interrupts())
        yield cluster_info()


def _init_ray(local: bool) -> None:
    """``ray.init``, with the driver's SIGTERM handler kept: ``ray.init`` installs its own (``sys.exit(15)``),
    so a SIGTERM during its ~4 s surfaces here as SystemExit(15) and becomes the driver's KeyboardInterrupt."""
    import ray

    previous = signal.getsignal(signal.SIGTERM) if on_main_thread() else None
    try:
        with own_process_groups() if local else contextlib.nullcontext():
            if os.environ.get("RAY_ADDRESS"):
                ray.init(logging_level=logging.WARNING)
            else:
                ray.init(include_dashboard=False, logging_level=logging.WARNING)
    except SystemExit as e:
        if e.code != signal.SIGTERM:
            raise
        note_sigterm()
        raise KeyboardInterrupt from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def actor_env() -> dict[str, str]:
    return {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}


def resolve_spec(spec: JobSpec, model: ModelInfo, cluster: ClusterInfo) -> ResolvedJob:
    """Fill the fields left to the model and the cluster, and check they fit."""
    device = spec.device or cluster.device
    dtype = spec.dtype or (FAMILIES[model.family].cuda_dtype if device == "cuda" else "float32")
    if device == "cpu" and dtype == "float16":
        raise JobError("--dtype: float16 needs CUDA and the job renders on CPU; use float32 or bfloat16")
    if device == "cpu" and spec.worker_gpus:
        raise JobError(
            f"--worker-gpus: {spec.worker_gpus} given but the job renders on CPU; drop it or use --device cuda"
        )
    gpus = _whole(spec.worker_gpus if spec.worker_gpus is not None else (1 if device == "cuda" else 0))
    workers = spec.workers or max(1, int(cluster.gpus / gpus + 1e-9) if gpus else 1)  # the GPUs there are now
    if spec.min_workers > workers:
        raise JobError(
            f"--min-workers: {spec.min_workers} is more than the {workers} worker(s) of the job; "
            "expected at most --workers"
        )
    default_cpus = 1 if device == "cuda" else max(1, cluster.cpus // workers)  # torch uses what it asks for
    cpus = _whole(spec.worker_cpus if spec.worker_cpus is not None else default_cpus)
    resolved = ResolvedJob.of(
        spec,
        device=device,
        dtype=dtype,
        workers=workers,
        worker_gpus=gpus,
        worker_cpus=cpus,
        height=spec.height or model.native_height,
        width=spec.width or model.native_width,
        **with_family_defaults(spec, model.family),
    )
    check_family(resolved, model.family, model.size_multiple, model.distilled)
    _check_fits(resolved, cluster)
    return resolved


def _whole(amount: float) -> float | int:
    return int(amount) if float(amount).is_integer() else amount


def actor_resources(spec: ResolvedJob) -> dict[str, float]:
    """What one render actor asks Ray for (a resolved spec: worker_cpus and worker_gpus are set)."""
    return {name: amount for name, amount in (("CPU", spec.worker_cpus), ("GPU", spec.worker_gpus)) if amount}


def _check_fits(spec: ResolvedJob, cluster: ClusterInfo) -> None:
    """A job whose actors can never be placed fails here, naming the flag: a local Ray that cannot
    grow, or an autoscaler none of whose node types holds one actor. Otherwise more workers than
    fit now is fine: they start as nodes join."""
    from turbobatch.jobs.run import nodes

    bundle, flags = actor_resources(spec), "--worker-gpus / --worker-cpus"
    if cluster.node_types is not None and not any(nodes.slots(t, bundle) for t in cluster.node_types):
        shapes = ", ".join(sorted({nodes.describe(t) for t in cluster.node_types}))
        raise JobError(
            f"{flags}: one actor needs {nodes.describe(bundle)}; no node type of this cluster has "
            f"that (its node types: {shapes})"
        )
    room = nodes.room(cluster.nodes, bundle)
    if cluster.local and room < spec.workers:
        unit, have = ("GPU", cluster.gpus) if spec.device == "cuda" else ("CPU", cluster.cpus)
        need = spec.workers * bundle.get(unit, 0)
        raise JobError(
            f"--workers: {spec.workers} actors need {_whole(need)} {unit}s; the Ray cluster has {have} "
            f"(a Ray started by the job cannot grow: lower --workers or {flags}, or join a cluster "
            "with RAY_ADDRESS)"
        )


def capacity_note(spec: ResolvedJob, cluster: ClusterInfo) -> str | None:
    """One line when the job starts with fewer actors than --workers and waits for the rest."""
    from turbobatch.jobs.run import nodes

    room = nodes.room(cluster.nodes, actor_resources(spec))
    if room >= spec.workers:
        return None
    return (
        f"turbobatch: the cluster has room for {room} of {spec.workers} render actors of "
        f"{nodes.describe(actor_resources(spec))} now; the others start as nodes join (autoscaler or `ray start`)"
    )
