"""Progress bar (shards, images/s, ETA, workers ready / starting) and the end-of-run summary
(counts, the job's speed, start-up, the device kinds that rendered and each one's rate per worker)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from turbobatch.jobs.startup import startup_line, startup_report
from turbobatch.jobs.status import device_kinds, devices_line


@dataclass
class ShardOutcome:
    shard_id: int
    num_images: int  # the shard's planned images (metadata rows, ok or error)
    marker: dict[str, Any] | None = None  # the done marker when committed
    error: str | None = None  # why the shard failed
    attempts: int = 1


@dataclass
class Progress:
    total_shards: int
    already_done: int
    pending_images: int
    outcomes: list[ShardOutcome] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    workers: tuple[int, int] = (0, 0)  # render actors (ready, starting)

    def __post_init__(self) -> None:
        # In a log (ray job logs, CI) redraws become lines: print one every 30 s there.
        interval = 1.0 if sys.stderr.isatty() else 30.0
        self.bar = tqdm(total=self.pending_images, unit="img", desc="render", dynamic_ncols=True, mininterval=interval)
        self._postfix()

    def record(self, outcome: ShardOutcome) -> None:
        self.outcomes.append(outcome)
        self.bar.update(outcome.num_images)
        self._postfix()

    def set_workers(self, ready: int, starting: int) -> None:
        """Render actors ready to take shards and still starting, for the progress line."""
        if (ready, starting) != self.workers:
            self.workers = (ready, starting)
            self._postfix()

    def note(self, message: str) -> None:
        """A line for the user (retries, replaced workers) that does not break the bar."""
        self.bar.write(message, file=sys.stderr)

    def _postfix(self) -> None:
        done = self.already_done + sum(o.marker is not None for o in self.outcomes)
        failed = sum(o.error is not None for o in self.outcomes)
        ready, starting = self.workers
        self.bar.set_postfix_str(f"shards {done}/{self.total_shards}" + (f", {failed} failed" if failed else "")
                                 + f", workers {ready} ready / {starting} starting")  # fmt: skip

    def close(self) -> None:
        self.bar.close()

    @property
    def failed(self) -> list[ShardOutcome]:
        return [o for o in self.outcomes if o.error is not None]

    def summary(self, output: str) -> str:
        elapsed = time.perf_counter() - self.started
        markers = [o.marker for o in self.outcomes if o.marker is not None]
        ok = sum(m["ok"] for m in markers)
        errors = sum(m["error"] for m in markers)
        lines = [
            f"shards: {self.already_done + len(markers)}/{self.total_shards} committed "
            f"({len(markers)} this run, {self.already_done} before, {len(self.failed)} failed)",
            f"images this run: {ok} ok, {errors} error",
            job_rate_line(ok, elapsed),
            f"output: {output}",
        ]
        startup = startup_line(startup_report(markers))  # the actors that committed a shard this run
        if startup:
            lines.append(startup)
        devices = devices_line(device_kinds(markers))  # which GPU kinds rendered (torch's names), and how fast
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
