"""Join (or start) Ray and resolve what depends on the cluster: device, dtype, workers and their resources."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turbobatch.errors import EXIT_TERMINATED, JobError
from turbobatch.models.resolve import ModelInfo
from turbobatch.spec.job import JobSpec

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
        local=_started_here(),
        node_types=None if types is None else tuple(types),
    )


def _started_here() -> bool:
    """Whether this process started the Ray it runs on (``ray.init()`` without an address)."""
    import ray._private.worker

    node = ray._private.worker._global_node
    return node is not None and node.is_head()


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
        local = _starts_local_ray()
        if local:
            stack.enter_context(_explicit_auth_mode())
        stack.callback(ray.shutdown)  # runs before the auth mode is restored
        _init_ray(local)
        stack.enter_context(sigterm_interrupts())
        yield cluster_info()


def _starts_local_ray() -> bool:
    """Whether ``ray.init()`` will start a Ray of its own: no RAY_ADDRESS and no ``ray start`` cluster recorded
    on this machine (the rule of ray/_private/services.py canonicalize_bootstrap_address)."""
    from ray._private import services

    return services.canonicalize_bootstrap_address(None) is None


def _init_ray(local: bool) -> None:
    """``ray.init``, with the driver's SIGTERM handler kept: ``ray.init`` installs its own (``sys.exit(15)``),
    so a SIGTERM during its ~4 s surfaces here as SystemExit(15) and becomes the driver's KeyboardInterrupt."""
    import ray

    previous = signal.getsignal(signal.SIGTERM) if _on_main_thread() else None
    try:
        with _own_process_groups() if local else contextlib.nullcontext():
            if os.environ.get("RAY_ADDRESS"):
                ray.init(logging_level=logging.WARNING)
            else:
                ray.init(include_dashboard=False, logging_level=logging.WARNING)
    except SystemExit as e:
        if e.code != signal.SIGTERM:
            raise
        _note_sigterm()
        raise KeyboardInterrupt from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _own_process_groups() -> Iterator[None]:
    """Start the local Ray's processes (gcs_server, raylet, monitors) each in a process group of its own.

    Slurm, systemd, Kubernetes and ``timeout`` signal the driver's whole process group. Ray starts these
    processes in the driver's group (ray/_private/services.py start_ray_process; on Windows it already gives
    them a group of their own), so they died first, and the driver then hung 60 s ("Failed to connect to GCS
    within 60 seconds"), exited 1 and left defunct gcs_server and raylet behind. In groups of their own they
    outlive the signal, and the driver stops its actors and shuts Ray down as after a SIGTERM to itself alone.
    Only with kernel fate-sharing (PR_SET_PDEATHSIG): they still die with the driver, even a SIGKILLed one; Ray's
    fallback, a reaper that kills the driver's process group, needs them in that group."""
    from ray._private import services, utils

    if not utils.detect_fate_sharing_support():
        yield
        return
    original = services.ConsolePopen

    class OwnGroupPopen(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("process_group", 0)
            super().__init__(*args, **kwargs)

    services.ConsolePopen = OwnGroupPopen
    try:
        yield
    finally:
        services.ConsolePopen = original


@contextlib.contextmanager
def _explicit_auth_mode() -> Iterator[None]:
    """Give the Ray started here the token auth that Ray gives it by default, without Ray's warning.

    A local ``ray.init()`` with RAY_AUTH_MODE unset turns token auth on and warns "Token authentication is enabled
    for this Ray cluster" on every run; with the mode set it is respected silently
    (ray/_private/authentication/authentication_token_setup.py enable_token_auth_by_default). Same security as
    Ray's default (a token in ~/.ray/auth_token, created if missing), one warning less. A mode the user set wins;
    a cluster the user joins is never touched (this runs only when ``ray.init`` starts a Ray). Ray's C++ config
    caches the mode when ray is imported, so it is reloaded after each change, as Ray's _enable_token_auth does."""
    if os.environ.get(AUTH_MODE_ENV) is not None:
        yield
        return
    _set_auth_mode("token")
    try:
        yield
    finally:
        _set_auth_mode(None)


def _set_auth_mode(mode: str | None) -> None:
    from ray._raylet import Config

    if mode is None:
        os.environ.pop(AUTH_MODE_ENV, None)
    else:
        os.environ[AUTH_MODE_ENV] = mode
    Config.initialize("")


AUTH_MODE_ENV = "RAY_AUTH_MODE"
# Set when SIGTERM (`ray job stop`, Kubernetes, Slurm, `timeout`) interrupted the driver, so it can say so.
SIGTERM_RECEIVED = threading.Event()
# After a SIGTERM the driver ends within this many seconds even when its cleanup hangs (its GCS signalled too, as
# systemd and Slurm do: ended 7.6 s after the signal here). The normal cleanup (actors killed, Ray shut down) took
# 1.9 s here; one cut short ends the same way, as every commit is atomic.
TERMINATE_GRACE_S = 6.0


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops the driver as Ctrl-C does (KeyboardInterrupt: the scheduler kills its actors, Ray shuts
    down) and sets SIGTERM_RECEIVED; a second SIGTERM is ignored, so it cannot cut that cleanup short. The
    outermost use installs the handler and, on leaving, disarms the watchdog (the cleanup is over). Main thread
    only (signals are delivered there; tests also run the driver in other threads)."""
    if not _on_main_thread() or signal.getsignal(signal.SIGTERM) is _terminate:
        yield
        return
    SIGTERM_RECEIVED.clear()
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        _disarm_watchdog()


_watchdog: list[threading.Timer] = []


def _terminate(signum: int, frame: object) -> None:
    if SIGTERM_RECEIVED.is_set():
        return
    _note_sigterm()
    raise KeyboardInterrupt


def _note_sigterm() -> None:
    """Record the SIGTERM and arm the watchdog that bounds the driver's cleanup."""
    SIGTERM_RECEIVED.set()
    timer = threading.Timer(TERMINATE_GRACE_S, _force_exit)
    timer.daemon = True
    _watchdog.append(timer)
    timer.start()


def _disarm_watchdog() -> None:
    while _watchdog:
        _watchdog.pop().cancel()


def _force_exit() -> None:
    """The cleanup after SIGTERM outlived TERMINATE_GRACE_S: say how to resume, SIGKILL the processes below the
    driver (the local Ray: gcs_server, raylet, its actors) and end with 143.

    Seen when systemd or Slurm signal every process of the job at once: the GCS stops answering and the pool's
    shutdown blocks in an internal_kv_put, and without this the driver hung 60 s and exited 1. Actors and other
    grandchildren are killed first, while their raylet still reaps them; then our own children, reaped here."""
    print(f"\n{TERMINATED_MESSAGE} (Ray did not shut down within {TERMINATE_GRACE_S:g} s)", file=sys.stderr)
    try:
        tree = _descendants(os.getpid())
        children = {pid for pid, parent in tree.items() if parent == os.getpid()}
        _kill(set(tree) - children)
        time.sleep(0.3)
        _kill(children)
        _reap(children, timeout=1.0)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_TERMINATED)


def _descendants(root: int) -> dict[int, int]:
    """pid -> parent pid of every process below ``root`` (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    below: dict[int, int] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in below:
                below[pid] = ppid
                frontier.append(pid)
    return below


def _kill(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _reap(pids: set[int], timeout: float) -> None:
    """Wait for our killed children, so none stays defunct (PID 1 of a container may never reap them)."""
    deadline = time.monotonic() + timeout
    left = set(pids)
    while left and time.monotonic() < deadline:
        for pid in list(left):
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    left.discard(pid)
            except ChildProcessError:  # reaped meanwhile (the main thread's Popen.wait)
                left.discard(pid)
        time.sleep(0.02)


TERMINATED_MESSAGE = "terminated: committed shards are kept; run the same command again to resume"


def actor_env() -> dict[str, str]:
    return {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}


def resolve_spec(spec: JobSpec, model: ModelInfo, cluster: ClusterInfo) -> JobSpec:
    """Fill the fields left to the model and the cluster, and check they fit."""
    device = spec.device or cluster.device
    dtype = spec.dtype or ("float16" if device == "cuda" else "float32")
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
    resolved = dataclasses.replace(
        spec,
        device=device,
        dtype=dtype,
        workers=workers,
        worker_gpus=gpus,
        worker_cpus=cpus,
        height=spec.height or model.native_height,
        width=spec.width or model.native_width,
    )
    _check_fits(resolved, cluster)
    return resolved


def _whole(amount: float) -> float | int:
    return int(amount) if float(amount).is_integer() else amount


def actor_resources(spec: JobSpec) -> dict[str, float]:
    """What one render actor asks Ray for (a resolved spec: worker_cpus and worker_gpus are set)."""
    return {name: amount for name, amount in (("CPU", spec.worker_cpus), ("GPU", spec.worker_gpus)) if amount}


def _check_fits(spec: JobSpec, cluster: ClusterInfo) -> None:
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


def capacity_note(spec: JobSpec, cluster: ClusterInfo) -> str | None:
    """One line when the job starts with fewer actors than --workers and waits for the rest."""
    from turbobatch.jobs.run import nodes

    room = nodes.room(cluster.nodes, actor_resources(spec))
    if room >= spec.workers:
        return None
    return (
        f"turbobatch: the cluster has room for {room} of {spec.workers} render actors of "
        f"{nodes.describe(actor_resources(spec))} now; the others start as nodes join (autoscaler or `ray start`)"
    )
