"""SIGTERM (Slurm, systemd, Kubernetes, ``timeout``, ``ray job stop``) and Ctrl-C: the driver stops as
after Ctrl-C, says how to resume, and ends within TERMINATE_GRACE_S even when its cleanup hangs."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from turbobatch.errors import EXIT_TERMINATED

# Set when SIGTERM (`ray job stop`, Kubernetes, Slurm, `timeout`) interrupted the driver, so it can say so.
SIGTERM_RECEIVED = threading.Event()
# After a SIGTERM the driver ends within this many seconds even when its cleanup hangs (its GCS signalled too, as
# systemd and Slurm do: ended 7.6 s after the signal here). The normal cleanup (actors killed, Ray shut down) took
# 1.9 s here; one cut short ends the same way, as every commit is atomic.
TERMINATE_GRACE_S = 6.0


def on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops the driver as Ctrl-C does (KeyboardInterrupt: the scheduler kills its actors, Ray shuts
    down) and sets SIGTERM_RECEIVED; a second SIGTERM is ignored, so it cannot cut that cleanup short. The
    outermost use installs the handler and, on leaving, disarms the watchdog (the cleanup is over). Main thread
    only (signals are delivered there; tests also run the driver in other threads)."""
    if not on_main_thread() or signal.getsignal(signal.SIGTERM) is _terminate:
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
    note_sigterm()
    raise KeyboardInterrupt


def note_sigterm() -> None:
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
