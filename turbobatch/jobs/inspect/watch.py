"""``turbobatch status OUT --watch [SECONDS]``: follow a job another process is writing.

Each refresh prints shards committed / failed / pending, images done, images/s over the last
minutes, the ETA and the shards that failed since the last refresh, from the output folder alone
(local or any fsspec URL), as ``turbobatch status`` does. A refresh costs one listing of
``_done/`` and one of ``_failed/``, plus one read per marker not seen before: the plan and spec
are read once, and what counts and rates need of each done marker is kept in memory, so a watch
of a million-image job does not read every marker again at every refresh. The first refresh takes
the markers already committed from their summaries where it can (output/summary.py), and writes the
summaries of what it had to read, as ``turbobatch status`` does (later refreshes write nothing). On S3
a refresh lists only the blocks of 1,000 shards not yet complete at the last one (and any whose shard
`verify --repair` named in spec.json: resume.record_removed_markers), so a watch of a job near its end
lists a few blocks, not all of ``_done/``.

The watch ends by itself once no planned shard is pending (exit 0, or 1 when some failed), or
after ``--count`` refreshes (exit 0). An output that does not exist yet is waited for. The
folder alone cannot tell a shard a new run is retrying from one that failed: a watch started
while a rerun retries failed shards ends at once.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from turbobatch.errors import JobError
from turbobatch.jobs.prepare import resume
from turbobatch.output import layout, summary
from turbobatch.output.shard import planned_images
from turbobatch.output.storage import Folder, bucket_of, check_endpoint

DEFAULT_INTERVAL_S = 10.0
RATE_WINDOW_S = 300.0  # images/s over the commits of the last 5 minutes: recent, yet over several commits
OBJECT_STORES = ("s3://", "s3a://", "gs://", "gcs://")  # a missing bucket there is an error, not "not yet"
SUMMARY_FROM = 10  # new markers of one block from which its summary is read first (one read for up to 1,000)


@dataclass(frozen=True)
class Commit:
    """What the watch keeps of one done marker: the counts and when, never the whole marker."""

    at: datetime | None  # committed_at; None in markers written before it existed
    ok: int
    error: int

    @property
    def images(self) -> int:
        """Metadata rows (ok or error): what the plan counts as the shard's images."""
        return self.ok + self.error

    @classmethod
    def from_marker(cls, marker: dict[str, Any]) -> Commit:
        at = marker.get("committed_at")
        return cls(datetime.fromisoformat(at) if at else None, int(marker.get("ok", 0)), int(marker.get("error", 0)))


def images_per_second(commits: Iterable[Commit], now: datetime, window_s: float = RATE_WINDOW_S) -> float | None:
    """Images (ok or error rows) per second over the commits of the last ``window_s`` seconds.

    The first commit in the window starts the span and its images are not counted: they were
    made before it. None with fewer than two commits in the window (or all at one instant):
    a rate from one commit would be a guess. Commit times come from the workers' clocks, the
    window from the watching machine's: clocks off by more than the window show no rate.
    """
    since = now - timedelta(seconds=window_s)
    recent = sorted((c for c in commits if c.at is not None and c.at >= since), key=lambda c: c.at)
    if len(recent) < 2:
        return None
    span = (recent[-1].at - recent[0].at).total_seconds()
    if span <= 0:
        return None
    return sum(c.images for c in recent[1:]) / span


def eta_seconds(pending_images: int, rate: float | None) -> float | None:
    """Seconds until the pending images are done at ``rate``; 0 with none left, None without a rate."""
    if pending_images <= 0:
        return 0.0
    if not rate or rate <= 0:
        return None
    return pending_images / rate


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``: as precise as an ETA deserves."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def format_window(window_s: float) -> str:
    """``5 min``, ``30 s``: the rate's window as the refresh line names it."""
    return f"{window_s / 60:g} min" if window_s >= 60 else f"{window_s:g} s"


@dataclass
class Waiting:
    """A refresh that found no job yet (no ``_job/spec.json``): the job is still starting."""

    time: datetime
    output: str
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {
            "time": self.time.isoformat(timespec="seconds"),
            "output": self.output,
            "state": "waiting",
            "reason": self.reason,
        }

    def lines(self) -> list[str]:
        return [f"{clock(self.time)}  waiting for the job: {self.reason}"]


@dataclass
class Snapshot:
    """One refresh of a planned job: counts as ``turbobatch status`` gives them, rate, ETA, new failures."""

    time: datetime
    output: str
    shards: dict[str, int]
    images: dict[str, int]  # as ``turbobatch status`` counts them: total, ok, error, in_failed_shards, pending
    images_per_s: float | None
    window_s: float
    new_failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ended(self) -> bool:
        """No planned shard left to commit or fail: the run is over (or never had work)."""
        return self.shards["pending"] == 0

    @property
    def eta_s(self) -> float | None:
        return eta_seconds(self.images["pending"], self.images_per_s)

    def as_json(self) -> dict[str, Any]:
        return {
            "time": self.time.isoformat(timespec="seconds"),
            "output": self.output,
            "state": "ended" if self.ended else "running",
            "shards": self.shards,
            "images": self.images,
            "images_per_s": None if self.images_per_s is None else round(self.images_per_s, 3),
            "rate_window_s": self.window_s,
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "new_failed": self.new_failures,
        }

    def lines(self) -> list[str]:
        s, r = self.shards, self.images
        rate = f"{self.images_per_s:,.2f} images/s" if self.images_per_s is not None else "— images/s"
        rate += f" (last {format_window(self.window_s)})"
        eta = self.eta_s
        done = r["ok"] + r["error"]
        line = (
            f"{clock(self.time)}  shards {s['committed']}/{s['total']} committed, {s['failed']} failed, "
            f"{s['pending']} pending; images {done:,}/{r['total']:,} ({r['ok']:,} ok, {r['error']:,} error); "
            f"{rate}; ETA {'—' if eta is None else format_duration(eta)}"
        )
        lines = [line]
        lines += [
            f"{clock(self.time)}  failed shard {f['shard']} (after {f['attempts']} attempt(s)): {f['error']}"
            for f in self.new_failures
        ]
        if self.ended:
            if s["failed"]:
                lines.append(
                    f"job ended: {s['committed']} shards committed, {s['failed']} failed; run the render "
                    "command again to retry the failed shards"
                )
            else:
                lines.append(
                    f"job ended: all {s['total']} shards committed, {r['ok']:,} images ok, {r['error']:,} error rows"
                )
        return lines


def clock(moment: datetime) -> str:
    """The refresh's local wall-clock time, for a line read by a person."""
    return moment.astimezone().strftime("%H:%M:%S")


class OutputWatcher:
    """Follows one output folder: plan and spec read once, each done or failed marker read once."""

    def __init__(self, out: Folder, window_s: float = RATE_WINDOW_S) -> None:
        self.out = out
        self.window_s = window_s
        self.model: str | None = None
        self.shard_images: dict[int, int] | None = None  # the plan: shard id -> planned images
        self.commits: dict[int, Commit] = {}
        self.failures: dict[int, dict[str, Any]] = {}
        self._bucket_checked = False
        self._summaries_written = False
        self._complete: set[int] = set()  # blocks of SUMMARY_BLOCK ids whose planned shards all committed

    def refresh(self, now: datetime | None = None) -> Snapshot | Waiting:
        """List ``_done/`` and ``_failed/`` once each and read only the markers not seen before."""
        now = now or datetime.now(UTC)
        if self.shard_images is None and not self._read_plan():
            return Waiting(now, self.out.display(), f"no {self.out.display(layout.SPEC)} yet (the job has not planned)")
        planned = self.shard_images.keys()
        skip = self._skipped_blocks()
        # The first refresh takes complete blocks from their summaries (S3: resume.done_listing); later ones list
        # only the blocks not yet complete, and those verify --repair named in spec.json.
        listing = resume.done_listing(self.out, len(planned), trust_summaries=not self._summaries_written, skip=skip)
        versions = listing.versions
        kept = {i for i in self.commits if i // layout.SUMMARY_BLOCK not in listing.listed}  # skipped: complete
        done = (versions.keys() & planned) | kept
        self._forget_removed(self.commits, done)  # verify --repair drops broken shards' markers
        new_done = sorted(done - self.commits.keys())
        # The first refresh of a large job takes the markers from their summaries, and writes those it had to
        # read; later ones read the few new markers, which no summary holds yet, and write nothing.
        markers = summary.done_markers(
            self.out,
            {i: versions[i] for i in new_done},
            write=not self._summaries_written,
            min_per_block=SUMMARY_FROM,
            stored=listing.summaries,
        )
        self._summaries_written = True
        for shard_id, marker in zip(new_done, markers):
            self.commits[shard_id] = Commit.from_marker(marker)
        self._complete = complete_blocks(self.commits.keys(), len(planned))
        failed = (resume.failed_shards(self.out) & planned) - done
        self._forget_removed(self.failures, failed)  # a failed shard that has since committed
        new_failed = sorted(failed - self.failures.keys())
        for shard_id, marker in zip(new_failed, self.out.read_json_many([layout.failed_path(i) for i in new_failed])):
            self.failures[shard_id] = {
                "shard": shard_id,
                "error": marker.get("error"),
                "attempts": marker.get("attempts"),
            }
        pending = planned - done - failed
        ok = sum(c.ok for c in self.commits.values())
        error = sum(c.error for c in self.commits.values())
        return Snapshot(
            time=now,
            output=self.out.display(),
            shards={"total": len(planned), "committed": len(done), "failed": len(failed), "pending": len(pending)},
            images={
                "total": sum(self.shard_images.values()),
                "ok": ok,
                "error": error,
                "in_failed_shards": sum(self.shard_images[i] for i in failed),
                "pending": sum(self.shard_images[i] for i in pending),
            },
            images_per_s=images_per_second(self.commits.values(), now, self.window_s),
            window_s=self.window_s,
            new_failures=[self.failures[i] for i in new_failed],
        )

    def _read_plan(self) -> bool:
        """Read plan and spec once the job has written both (the spec last); False until then."""
        if not self.out.exists(layout.SPEC):
            self._check_bucket_exists()
            return False
        plan = self.out.read_json(layout.PLAN)
        self.model = self.out.read_json(layout.SPEC)["spec"].get("model")
        self.shard_images = planned_images(plan)
        return True

    def _check_bucket_exists(self) -> None:
        """A missing bucket is never created by the job (it fails at its first step): say so
        rather than wait for ever. Checked once; a missing folder in a bucket is waited for."""
        if self._bucket_checked or not self.out.url.startswith(OBJECT_STORES):
            return
        bucket = bucket_of(self.out.url)
        if not self.out.fs.exists(bucket):
            raise JobError(f"output: bucket {bucket!r} does not exist (or is not visible with these credentials)")
        self._bucket_checked = True

    def _skipped_blocks(self) -> set[int]:
        """The complete blocks a refresh need not list: none on the first refresh, and none that holds a shard
        `verify --repair` named in spec.json (it records them before removing their markers)."""
        if not self._complete:
            return set()
        removed = resume.removed_markers(self.out)
        if removed is None:
            return set()
        return self._complete - {i // layout.SUMMARY_BLOCK for i in removed}

    @staticmethod
    def _forget_removed(seen: dict[int, Any], listed: set[int]) -> None:
        for shard_id in seen.keys() - listed:
            del seen[shard_id]


def complete_blocks(committed: Iterable[int], planned: int) -> set[int]:
    """Blocks of SUMMARY_BLOCK shard ids (of a plan of ids 0 to ``planned`` - 1) whose shards all committed."""
    per_block: dict[int, int] = {}
    for i in committed:
        if i < planned:
            per_block[i // layout.SUMMARY_BLOCK] = per_block.get(i // layout.SUMMARY_BLOCK, 0) + 1
    size = layout.SUMMARY_BLOCK
    return {b for b, n in per_block.items() if n == min(size, planned - b * size)}


def watch_output(
    out: Folder,
    interval_s: float = DEFAULT_INTERVAL_S,
    count: int | None = None,
    as_json: bool = False,
    stream: TextIO | None = None,
) -> int:
    """Refresh every ``interval_s`` seconds until the job ends (exit code 0, or 1 with failed
    shards) or after ``count`` refreshes (0). Storage errors and KeyboardInterrupt propagate
    to the caller (status.main turns them into exit codes 2 and 130)."""
    stream = stream or sys.stdout
    check_endpoint(out.url, out.storage_options)  # an unreachable endpoint fails in seconds, not after retries
    watcher = OutputWatcher(out)
    if not as_json:
        print(f"watching {out.display()} every {interval_s:g} s (Ctrl-C to stop)", file=stream, flush=True)
    plan_shown = False
    refreshes = 0
    while True:
        started = time.monotonic()
        snapshot = watcher.refresh()
        refreshes += 1
        if as_json:
            lines = [json.dumps(snapshot.as_json(), separators=(",", ":"))]
        else:
            lines = snapshot.lines()
            if isinstance(snapshot, Snapshot) and not plan_shown:
                lines.insert(0, plan_line(watcher, snapshot))
                plan_shown = True
        print("\n".join(lines), file=stream, flush=True)
        if isinstance(snapshot, Snapshot) and snapshot.ended:
            return 1 if snapshot.shards["failed"] else 0
        if count is not None and refreshes >= count:
            return 0
        time.sleep(max(0.0, interval_s - (time.monotonic() - started)))


def plan_line(watcher: OutputWatcher, snapshot: Snapshot) -> str:
    """What the job is, once: shards and images planned, the model."""
    return f"plan: {snapshot.shards['total']} shards, {snapshot.images['total']:,} images, model {watcher.model}"
