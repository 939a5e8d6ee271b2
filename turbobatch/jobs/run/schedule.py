"""Feed shards to the render actors, pull-style, and outlive their failures.

The actors come and go (jobs/run/pool.py); this module owns the shard queue. Rendering starts once
``--min-workers`` actors are ready, and each ready actor keeps ``INFLIGHT_PER_ACTOR`` shards in flight.

A shard whose actor left with its node (drained, preempted, lost) goes back to the front of the queue
and the attempt is not counted. Any other infrastructure failure (its actor died on a live node,
storage timed out or answered 5xx) puts it back after a backoff, up to ``--max-retries`` times. A shard
that fails otherwise (bad data, a bug), or runs out of retries, gets a ``_failed/`` marker and the job
goes on with the others. When nothing can progress for ``--stall-timeout`` seconds the job stops
(JobStalled) naming what it waited for. Shards committed, failed and retried and the actors ready
or starting also go to Ray's metrics (turbobatch/metrics.py).

The scheduler is given its pool and its metrics and never calls Ray itself (as Ray Data keeps its
executor's state apart from the loop that drives it): tests drive it with a fake pool in
milliseconds, benchmarks/driver_scale.py with a simulated one of 1,000 actors, and a run with
jobs/run/pool.py's ActorPool of real actors.
"""

from __future__ import annotations

import heapq
import re
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from turbobatch.errors import JobError, JobStalled, error_text, is_retryable
from turbobatch.jobs.prepare import resume
from turbobatch.jobs.run import nodes
from turbobatch.jobs.run.block_summaries import BlockSummaries
from turbobatch.jobs.run.pool import ActorPool, Outcome
from turbobatch.jobs.run.progress import Progress, ShardOutcome
from turbobatch.jobs.run.retry import backoff_s
from turbobatch.jobs.run.stall import NO_ACTOR, StallWatch
from turbobatch.metrics import DriverMetrics
from turbobatch.output.shard import Shard
from turbobatch.output.storage import Folder
from turbobatch.spec.resolved import ResolvedJob

POLL_S = 1.0  # the loop wakes at least this often (drains, stall clock, progress)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the remote traceback


class Pool(Protocol):
    """What the scheduler needs of its render actors (jobs/run/pool.py's ActorPool is the real one)."""

    starting: dict[Any, Any]  # actors not ready yet
    crash_cause: str | None
    ever_ready: bool

    @property
    def usable_count(self) -> int: ...
    @property
    def gave_up(self) -> bool: ...
    def start(self) -> None: ...
    def shutdown(self) -> None: ...
    def submit(self, shard: Shard) -> tuple[Any, Any] | None: ...
    def wait(self, running: list[Any], timeout: float) -> list[Any]: ...
    def outcome(self, actor_id: Any, ref: Any) -> Outcome: ...
    def finished(self, actor_id: Any) -> None: ...
    def watch_drains(self, shard_seconds: float | None) -> None: ...
    def describe_waiting(self) -> str: ...


class Metrics(Protocol):
    """What the scheduler reports (turbobatch/metrics.py's DriverMetrics is the real one)."""

    def shard_committed(self, marker: dict[str, Any]) -> None: ...
    def shard_failed(self) -> None: ...
    def shard_retried(self, cause: str) -> None: ...
    def actors(self, ready: int, starting: int) -> None: ...
    def close(self) -> None: ...


@dataclass(order=True)
class _Waiting:
    not_before: float
    shard: Shard = field(compare=False)


class ShardScheduler:
    """One run's scheduling state: queues, counted attempts per shard, shards in flight."""

    def __init__(
        self,
        spec: ResolvedJob,
        out: Folder,
        progress: Progress,
        previously_failed: set[int],
        pool: Pool,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        summaries: BlockSummaries | None = None,
    ) -> None:
        self.spec, self.out, self.progress, self.clock = spec, out, progress, clock
        self.pool, self.metrics, self.summaries = pool, metrics, summaries
        self.previously_failed = previously_failed
        self.ready: deque[Shard] = deque()
        self.waiting: list[_Waiting] = []  # heap: shards waiting out a retry backoff
        # counted attempts of unfinished shards (a drained or lost node's do not count)
        self.attempts: dict[int, int] = {}
        self.running: dict[Any, tuple[Any, Shard]] = {}  # task ref -> (actor id, shard)
        self.shard_seconds: deque[float] = deque(maxlen=20)  # recent shards' time on their actor
        self.stall = StallWatch(spec.stall_timeout)
        self.min_ready = 1
        self.started = False  # latched once min_ready actors were ready
        self.actors_reported: tuple[int, int] | None = None  # (ready, starting) last shown and sent

    def run(self, pending: list[Shard]) -> None:
        """Render every pending shard; each outcome goes to ``progress`` (and _failed/ if failed)."""
        if not pending:
            return
        self.min_ready = min(self.spec.min_workers, worker_target(self.spec, pending))
        self.ready.extend(pending)
        try:
            self.pool.start()
            while self.ready or self.waiting or self.running:  # an actor still starting is not work
                self._step()
        finally:
            self.pool.shutdown()
            self.metrics.close()
            if self.summaries is not None:
                self.summaries.close()

    def _step(self) -> None:
        pool = self.pool
        pool.watch_drains(statistics.median(self.shard_seconds) if self.shard_seconds else None)
        self._check_progress()
        self._release_waiting()
        self._submit_ready()
        actors = (pool.usable_count, len(pool.starting))
        if actors != self.actors_reported:
            self.actors_reported = actors
            self.progress.set_workers(*actors)
            self.metrics.actors(*actors)
        for ref in pool.wait(list(self.running), min(POLL_S, self._seconds_to_next_retry())):
            self._on_shard(ref)

    # -- stalls --------------------------------------------------------------------------
    def _check_progress(self) -> None:
        pool = self.pool
        if pool.gave_up:
            if not pool.ever_ready:  # as a bad model would: nothing was ever rendered
                raise JobError(f"workers: the render actors could not start ({pool.crash_cause})")
            raise JobStalled(f"no render worker is left: {pool.describe_waiting()}")
        self.started = self.started or pool.usable_count >= self.min_ready
        stalled = self.stall.check(self.clock(), self.started and pool.usable_count > 0, len(self.running))
        if stalled is None:
            return
        what, seconds = stalled
        waited = f"stalled for {seconds:.0f} s (--stall-timeout {self.spec.stall_timeout:g})"
        if what == NO_ACTOR:
            ready = "" if self.started else f"{pool.usable_count} of {self.min_ready} (--min-workers) actors ready; "
            raise JobStalled(f"{waited}: no render actor ready; {ready}{pool.describe_waiting()}")
        actors = len({actor for actor, _ in self.running.values()})
        raise JobStalled(
            f"{waited}: no shard finished while {len(self.running)} were in flight on {actors} render actor(s)"
        )

    # -- queues --------------------------------------------------------------------------
    def _release_waiting(self) -> None:
        now = self.clock()
        while self.waiting and self.waiting[0].not_before <= now:
            self.ready.appendleft(heapq.heappop(self.waiting).shard)  # retries go first

    def _seconds_to_next_retry(self) -> float:
        if not self.waiting:
            return POLL_S
        return max(0.0, self.waiting[0].not_before - self.clock())

    def _submit_ready(self) -> None:
        while self.ready and self.started:
            sent = self.pool.submit(self.ready[0])
            if sent is None:
                return
            shard = self.ready.popleft()
            self.attempts[shard.shard_id] = self.attempts.get(shard.shard_id, 0) + 1
            actor_id, ref = sent
            self.running[ref] = (actor_id, shard)

    # -- outcomes ------------------------------------------------------------------------
    def _on_shard(self, ref: Any) -> None:
        actor_id, shard = self.running.pop(ref)
        self.pool.finished(actor_id)
        outcome = self.pool.outcome(actor_id, ref)
        if outcome.error is not None:
            if outcome.cause == nodes.DIED:
                self._on_failure(shard, outcome.error)
            else:
                self._requeue_uncounted(shard, outcome.cause)
            return
        marker = outcome.marker
        self.stall.shard_finished(self.clock())
        self.shard_seconds.append(marker.get("timings_s", {}).get("total", 0.0))
        self.attempts.pop(shard.shard_id, None)
        self.progress.record(ShardOutcome(shard.shard_id, shard.num_images, marker=marker))
        self.metrics.shard_committed(marker)
        if self.summaries is not None:
            self.summaries.committed(shard.shard_id, marker)
        if shard.shard_id in self.previously_failed:
            resume.clear_failure(self.out, shard.shard_id)

    def _requeue_uncounted(self, shard: Shard, cause: str) -> None:
        """Its node was drained or lost: back to the front of the queue, the attempt not counted."""
        self.attempts[shard.shard_id] -= 1
        self.ready.appendleft(shard)
        self.metrics.shard_retried(cause)
        self._note(
            f"shard {shard.shard_id} requeued: its node was {'lost' if cause == nodes.NODE_LOST else cause} "
            "(not counted as a retry)"
        )

    def _on_failure(self, shard: Shard, e: Exception) -> None:
        attempts, retryable = self.attempts[shard.shard_id], is_retryable(e)
        if retryable and attempts <= self.spec.max_retries:
            delay = backoff_s(attempts)
            self._note(
                f"shard {shard.shard_id}: {error_text(e)}; retry {attempts}/{self.spec.max_retries} in {delay:.0f} s"
            )
            heapq.heappush(self.waiting, _Waiting(self.clock() + delay, shard))
            self.metrics.shard_retried("retry")
            return
        self.stall.shard_finished(self.clock())
        self._record_failed(shard, error_text(e), _ANSI.sub("", str(e)), retryable)

    def _record_failed(self, shard: Shard, error: str, detail: str, retryable: bool) -> None:
        attempts = self.attempts.pop(shard.shard_id, 0)
        try:
            resume.record_failure(self.out, shard, error, detail, attempts, retryable)
        except Exception as e:  # noqa: BLE001 - the shard stays pending without its marker
            self._note(f"shard {shard.shard_id}: could not write its failed marker ({error_text(e)})")
        self.progress.record(ShardOutcome(shard.shard_id, shard.num_images, error=error, attempts=attempts))
        self.metrics.shard_failed()

    def _note(self, message: str) -> None:
        self.progress.note(f"turbobatch: {message}")


def worker_target(spec: ResolvedJob, pending: list[Shard]) -> int:
    """How many actors the job starts: --workers, but never more than there are shards."""
    return min(spec.workers or 1, len(pending))


def render_shards(
    pending: list[Shard],
    spec: ResolvedJob,
    out: Folder,
    progress: Progress,
    previously_failed: set[int] = frozenset(),
    summaries: BlockSummaries | None = None,
) -> None:
    """Render every pending shard on RenderWorker actors (see ShardScheduler); ``summaries`` writes each
    block's summary as it completes."""
    if not pending:
        return
    pool = ActorPool(spec, worker_target(spec, pending), lambda message: progress.note(f"turbobatch: {message}"))
    metrics = DriverMetrics(spec.model)
    scheduler = ShardScheduler(spec, out, progress, set(previously_failed), pool, metrics, summaries=summaries)
    scheduler.run(pending)
