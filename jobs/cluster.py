"""Join (or start) Ray and resolve what depends on the cluster: device, dtype, worker count."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from jobs.errors import JobError
from jobs.spec import JobSpec
from workers.models import ModelInfo

# Passed to actors so that a joined cluster's workers find the same caches as the driver.
# Never a secret: runtime_env values can reach Ray's logs (credentials stay in each node's env).
FORWARDED_ENV = ("TURBOBATCH_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "TURBOBATCH_TEST_FAULTS")


@dataclass(frozen=True)
class ClusterInfo:
    gpus: int
    cpus: int

    @property
    def device(self) -> str:
        return "cuda" if self.gpus else "cpu"


@contextlib.contextmanager
def ray_session() -> Iterator[ClusterInfo]:
    """``ray.init()`` honours RAY_ADDRESS; a Ray started here is shut down on exit."""
    import ray

    started = not ray.is_initialized()
    if started:
        if os.environ.get("RAY_ADDRESS"):
            ray.init(logging_level=logging.WARNING)
        else:
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
    try:
        with _sigterm_interrupts():
            resources = ray.cluster_resources()
            yield ClusterInfo(gpus=int(resources.get("GPU", 0)), cpus=int(resources.get("CPU", 0)))
    finally:
        if started:
            ray.shutdown()


# Set when SIGTERM (`ray job stop`, Kubernetes) interrupted the driver, so it can say so.
SIGTERM_RECEIVED = threading.Event()


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops the driver as Ctrl-C does (KeyboardInterrupt: the scheduler kills its actors)
    and sets SIGTERM_RECEIVED. Set after ``ray.init``, whose own handler would abort the process;
    main thread only (signals are delivered there; tests also run the driver in other threads)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    SIGTERM_RECEIVED.clear()

    def terminate(signum: int, frame: object) -> None:
        SIGTERM_RECEIVED.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def actor_env() -> dict[str, str]:
    return {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}


def resolve_spec(spec: JobSpec, model: ModelInfo, cluster: ClusterInfo) -> JobSpec:
    """Fill the fields left to the model and the cluster, and check they fit."""
    device = spec.device or cluster.device
    dtype = spec.dtype or ("float16" if device == "cuda" else "float32")
    if device == "cpu" and dtype == "float16":
        raise JobError("--dtype: float16 needs CUDA and the job renders on CPU; use float32 or bfloat16")
    workers = spec.workers or max(1, cluster.gpus)
    capacity = cluster.gpus if device == "cuda" else cluster.cpus
    # An explicit --device cuda may wait for an autoscaler to add GPU nodes; auto must fit now.
    if workers > capacity and not (spec.device == "cuda"):
        unit = "GPU" if device == "cuda" else "CPU"
        raise JobError(f"--workers: {workers} actors need {workers} {unit}s; the Ray cluster has {capacity}")
    return dataclasses.replace(
        spec,
        device=device,
        dtype=dtype,
        workers=workers,
        height=spec.height or model.native_height,
        width=spec.width or model.native_width,
    )
