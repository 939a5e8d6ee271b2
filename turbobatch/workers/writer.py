"""Write one shard: images (tar, files or data Parquet), metadata, then the done marker LAST.

Encoding runs on a thread pool, so it overlaps the next pipeline call. Images reach the
format's sink (workers/sinks/base.py, workers/sinks/parquet.py) in render order as their encodes
finish (bounded queue, so memory stays small); metadata is workers/metadata.py. Only a shard with
a done marker exists for readers, status and resume; every data object is written whole (temp
name + rename locally, one PUT on object stores) before that marker.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from turbobatch.output import layout
from turbobatch.output.shard import Shard
from turbobatch.output.storage import Folder
from turbobatch.spec.resolved import ResolvedJob
from turbobatch.workers.batches import Rendered
from turbobatch.workers.metadata import new_record, write_metadata
from turbobatch.workers.rows import Row
from turbobatch.workers.sinks.base import ImageSink
from turbobatch.workers.sinks.files import FilesSink
from turbobatch.workers.sinks.parquet import DataParquetSink
from turbobatch.workers.sinks.tar import TarSink


class ShardWriter:
    """Use as a context manager: leaving it by an exception discards the shard's temp objects."""

    def __init__(
        self,
        out: Folder,
        shard: Shard,
        spec: ResolvedJob,
        pool: ThreadPoolExecutor,
        max_pending: int,
        origin: dict[str, Any] | None = None,
    ) -> None:
        self.out, self.shard, self.spec, self.pool = out, shard, spec, pool
        # Who renders the shard, for its done marker: host ("worker"), Ray node id, process id.
        self.origin = origin or {"worker": socket.gethostname(), "node_id": None, "pid": os.getpid()}
        self.max_pending = max_pending
        self.records: list[dict[str, Any]] = []
        self.pending: deque[tuple[dict[str, Any], Future[bytes]]] = deque()
        self.files: dict[str, dict[str, Any]] = {}
        self._stack = contextlib.ExitStack()
        self._sink: ImageSink | None = None
        self.wait_s = 0.0  # time add_image spent blocked on encodes (the queue was full): the GPU idled

    def __enter__(self) -> ShardWriter:
        self._sink = open_sink(self.out, self.shard, self.spec, self._stack)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if exc_info[0] is not None:
            for _, future in self.pending:
                future.cancel()
        self._stack.__exit__(*exc_info)

    # -- rows --------------------------------------------------------------------------
    def add_error(self, row: Row) -> None:
        self.records.append(new_record(row, self.shard, self.spec, status="error", error=row.error))

    def add_image(self, rendered: Rendered) -> None:
        record = new_record(
            rendered.row,
            self.shard,
            self.spec,
            status="ok",
            render_ms=rendered.render_ms,
            truncated=rendered.truncated,
            redecoded_fp32=rendered.redecoded_fp32,
            batch_size=rendered.batch_size,
            nan_count=rendered.nan_count,
            mean=rendered.mean,
            std=rendered.std,
            dhash=rendered.dhash,
        )
        future = self._sink.submit(self.pool, rendered.image, record)
        self.records.append(record)
        self.pending.append((record, future))
        started = time.perf_counter()
        self._drain(keep=self.max_pending)
        self.wait_s += time.perf_counter() - started

    def _drain(self, keep: int) -> None:
        """Finish encodes at the head of the queue, in render order: every one already done, and
        waiting for more while over ``keep`` are pending (``keep=0`` waits for all)."""
        while self.pending and (self.pending[0][1].done() or len(self.pending) > keep):
            record, future = self.pending.popleft()
            data = future.result()
            record["sha256"] = hashlib.sha256(data).hexdigest()
            record["bytes"] = len(data)
            self._sink.add(record, data)

    # -- commit ------------------------------------------------------------------------
    def commit(self, timings: dict[str, float], started: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Flush images, write metadata, then the done marker. Returns the marker.

        ``timings`` gain "commit" (this call up to the marker) and "total" (since ``started``,
        a ``time.perf_counter()`` value). ``extra``: more marker fields (the worker's start-up record).
        """
        commit_started = time.perf_counter()
        self._drain(keep=0)
        sid = self.shard.shard_id
        self.files.update(self._sink.close())
        self.files.update(write_metadata(self.out, self.shard, self.spec, self.records))
        ok = sum(r["status"] == "ok" for r in self.records)
        now = time.perf_counter()
        timings = {**timings, "commit": now - commit_started, "total": now - started}
        marker = {
            "shard": sid,
            "rows": len(self.records),
            "ok": ok,
            "error": len(self.records) - ok,
            "image_bytes": sum(r["bytes"] or 0 for r in self.records),
            "files": self.files,
            "spec_hash": self.spec.output_hash(),
            "timings_s": {k: round(v, 4) for k, v in timings.items()},
            **{k: self.origin.get(k) for k in ("worker", "node_id", "pid", "device_kind")},
            "committed_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            **(extra or {}),
        }
        if marker["rows"] != self.shard.num_images:
            raise RuntimeError(f"shard {sid}: {marker['rows']} metadata rows for {self.shard.num_images} images")
        if any(r["status"] == "ok" and r["sha256"] is None for r in self.records):
            raise RuntimeError(f"shard {sid}: an ok row has no written image")
        self.out.write_json(layout.done_path(sid), marker)
        return marker


def open_sink(out: Folder, shard: Shard, spec: ResolvedJob, stack: contextlib.ExitStack) -> ImageSink:
    """The sink of ``spec.format``; its temp objects are discarded if ``stack`` exits by an error."""
    if spec.format == "tar":
        return TarSink(out, shard, spec, stack)
    if spec.format == "parquet":
        return DataParquetSink(out, shard, spec, stack)
    return FilesSink(out, shard, spec)
