"""Progress bar (shards, images/s, ETA, workers ready / starting) and the end-of-run summary
(counts, the job's speed, start-up, the device kinds that rendered and each one's rate per worker)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from turbobatch.jobs.inspect.startup import startup_line, startup_report
from turbobatch.jobs.inspect.status import devices_line, finish_device_kinds, tally_device


@dataclass
class ShardOutcome:
    shard_id: int
    num_images: int  # the shard's planned images (metadata rows, ok or error)
    marker: dict[str, Any] | None = None  # the done marker when committed
    error: str | None = None  # why the shard failed
    attempts: int = 1


@dataclass
class Progress:
    """Counts, not a list of outcomes: a driver of 100,000 shards keeps no marker per shard (a
    marker holds every object's sha256), only the failed shards and each actor's first marker."""

    total_shards: int
    already_done: int
    pending_images: int
    started: float = field(default_factory=time.perf_counter)
    workers: tuple[int, int] = (0, 0)  # render actors (ready, starting)
    committed: int = 0  # shards committed this run
    ok: int = 0  # images rendered this run
    errors: int = 0  # images that ended as error rows this run
    failed: list[ShardOutcome] = field(default_factory=list)
    startup_markers: list[dict[str, Any]] = field(default_factory=list)  # one per actor: its first shard's
    kinds: dict[str, dict[str, Any]] = field(default_factory=dict)  # device kinds, tallied (jobs/inspect/status.py)

    def __post_init__(self) -> None:
        # In a log (ray job logs, CI) redraws become lines: print one every 30 s there.
        self.interval = 1.0 if sys.stderr.isatty() else 30.0
        self.bar = tqdm(
            total=self.pending_images, unit="img", desc="render", dynamic_ncols=True, mininterval=self.interval
        )
        self._drawn = 0.0
        self._postfix()

    def record(self, outcome: ShardOutcome) -> None:
        marker = outcome.marker
        if marker is None:
            self.failed.append(outcome)
        else:
            self.committed += 1
            self.ok += marker.get("ok", 0)
            self.errors += marker.get("error", 0)
            tally_device(self.kinds, marker)
            if marker.get("startup_s"):
                self.startup_markers.append(marker)
        self.bar.update(outcome.num_images)
        self._postfix()

    def set_workers(self, ready: int, starting: int) -> None:
        """Render actors ready to take shards and still starting, for the progress line."""
        if (ready, starting) != self.workers:
            self.workers = (ready, starting)
            self._postfix(force=True)  # an actor joined or left: rare, and what a user waits to see

    def note(self, message: str) -> None:
        """A line for the user (retries, replaced workers) that does not break the bar."""
        self.bar.write(message, file=sys.stderr)

    def _postfix(self, force: bool = False) -> None:
        """Redraw at most once per interval unless ``force``: at 100 completions/s a redraw per shard would
        be most of the driver's time (and, in a log, a line per shard)."""
        now = time.perf_counter()
        if not force and self._drawn and now - self._drawn < self.interval:
            return
        self._drawn = now
        ready, starting = self.workers
        failed = len(self.failed)
        self.bar.set_postfix_str(
            f"shards {self.already_done + self.committed}/{self.total_shards}"
            + (f", {failed} failed" if failed else "")
            + f", workers {ready} ready / {starting} starting"
        )

    def close(self) -> None:
        self._postfix(force=True)
        self.bar.close()

    def summary(self, output: str) -> str:
        elapsed = time.perf_counter() - self.started
        ok = self.ok
        lines = [
            f"shards: {self.already_done + self.committed}/{self.total_shards} committed "
            f"({self.committed} this run, {self.already_done} before, {len(self.failed)} failed)",
            f"images this run: {ok} ok, {self.errors} error",
            job_rate_line(ok, elapsed),
            f"output: {output}",
        ]
        startup = startup_line(startup_report(self.startup_markers))  # the actors that committed a shard this run
        if startup:
            lines.append(startup)
        devices = devices_line(finish_device_kinds(self.kinds))  # which GPU kinds rendered (torch's names), how fast
        if devices:
            lines.append(devices)
        failed = sorted(self.failed, key=lambda o: o.shard_id)
        lines += [f"failed shard {o.shard_id} (after {o.attempts} attempt(s)): {o.error}" for o in failed[:20]]
        if len(failed) > 20:
            lines.append(f"... and {len(failed) - 20} more failed shards (see _failed/)")
        if failed:
            lines.append("failed shards are recorded under _failed/; run the same command again to retry them")
        return "\n".join(lines)


def job_rate_line(ok: int, elapsed: float) -> str:
    """The job's rate: this run's ok images over its wall time, all workers together and start-up included.
    Named as such because the devices line beside it gives another rate, one worker's over its device time."""
    rate = ok / elapsed if elapsed > 0 else 0.0
    return f"speed: {rate:.2f} images/s for the job ({ok} ok images this run / {elapsed:.1f} s wall time)"
