"""Write one shard: images (tar or files), metadata, then the done marker LAST.

Encoding runs on a thread pool, so it overlaps the next pipeline call. Tar members are
appended in row order as their encodes finish (bounded queue, so memory stays small). Only a
shard with a done marker exists for readers, status and resume; every data object is written
whole (temp name + rename locally, one PUT on object stores) before that marker.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import tarfile
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from jobs import layout
from jobs.plan import Shard
from jobs.spec import JobSpec
from jobs.storage import TEMP_MARK, Folder
from workers.control import control_reference
from workers.encode import encode_image
from workers.renderer import Rendered
from workers.rows import Row

METADATA_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("global_index", pa.int64()),
        ("shard", pa.int64()),
        ("prompt", pa.string()),
        ("negative_prompt", pa.string()),
        ("seed", pa.int64()),
        ("model", pa.string()),
        ("steps", pa.int32()),
        ("guidance_scale", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("dtype", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("image", pa.string()),
        ("sha256", pa.string()),
        ("bytes", pa.int64()),
        ("render_ms", pa.float64()),
        ("truncated", pa.bool_()),
        ("redecoded_fp32", pa.bool_()),
        ("batch_size", pa.int32()),
        ("nan_count", pa.int64()),
        ("mean", pa.float64()),
        ("std", pa.float64()),
        ("dhash", pa.string()),
        ("vae", pa.string()),
        ("controlnet", pa.string()),
        ("controlnet_scale", pa.float64()),
        ("control_preprocess", pa.string()),
        ("control_image", pa.string()),
    ]
)


class _HashingWriter:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target, self.sha256, self.size = target, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.target.write(data)


class ShardWriter:
    """Use as a context manager: leaving it by an exception discards the shard's temp objects."""

    def __init__(self, out: Folder, shard: Shard, spec: JobSpec, pool: ThreadPoolExecutor, max_pending: int,
                 origin: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.out, self.shard, self.spec, self.pool = out, shard, spec, pool
        # Who renders the shard, for its done marker: host ("worker"), Ray node id, process id.
        self.origin = origin or {"worker": socket.gethostname(), "node_id": None, "pid": os.getpid()}
        self.max_pending = max_pending
        self.records: list[dict[str, Any]] = []
        self.pending: deque[tuple[dict[str, Any], Future[bytes]]] = deque()
        self.files: dict[str, dict[str, Any]] = {}
        self._stack = contextlib.ExitStack()
        self._tar: tarfile.TarFile | None = None
        self._tar_stream: _HashingWriter | None = None
        self.wait_s = 0.0  # time add_image spent blocked on encodes (the queue was full): the GPU idled

    def __enter__(self) -> ShardWriter:
        if self.spec.format == "files" and self.out.is_local:
            self._remove_temp_leftovers()
        if self.spec.format == "tar":
            handle = self._stack.enter_context(self.out.atomic_writer(layout.tar_path(self.shard.shard_id)))
            self._tar_stream = _HashingWriter(handle)
            self._tar = tarfile.open(fileobj=self._tar_stream, mode="w|", format=tarfile.PAX_FORMAT)
        return self

    def _remove_temp_leftovers(self) -> None:
        """Temp files a killed attempt at this shard left in its image folder (local disks only:
        object stores get whole PUTs, never temp objects)."""
        folder = layout.image_dir(self.shard.shard_id)
        for name in self.out.list_names(folder):
            if TEMP_MARK in name:
                self.out.remove_file(f"{folder}/{name}")

    def __exit__(self, *exc_info: Any) -> None:
        if exc_info[0] is not None:
            for _, future in self.pending:
                future.cancel()
        self._stack.__exit__(*exc_info)

    # -- rows --------------------------------------------------------------------------
    def add_error(self, row: Row) -> None:
        self.records.append(self._record(row, status="error", error=row.error))

    def add_image(self, rendered: Rendered) -> None:
        record = self._record(rendered.row, status="ok", render_ms=rendered.render_ms, truncated=rendered.truncated,
                              redecoded_fp32=rendered.redecoded_fp32, batch_size=rendered.batch_size,
                              nan_count=rendered.nan_count, mean=rendered.mean, std=rendered.std,
                              dhash=rendered.dhash)  # fmt: skip
        key, ext = rendered.row.key, self.spec.image_extension
        if self.spec.format == "tar":
            record["image"] = f"{key}.{ext}"
            future = self.pool.submit(encode_image, rendered.image, self.spec.image_format, self.spec.effective_quality)
        else:
            record["image"] = layout.image_path(self.shard.shard_id, key, ext)
            future = self.pool.submit(self._encode_and_write, rendered.image, record["image"])
        self.records.append(record)
        self.pending.append((record, future))
        started = time.perf_counter()
        self._drain(keep=self.max_pending)
        self.wait_s += time.perf_counter() - started

    def _encode_and_write(self, image: Any, rel: str) -> bytes:
        data = encode_image(image, self.spec.image_format, self.spec.effective_quality)
        self.out.write_bytes(rel, data)
        return data

    def _drain(self, keep: int) -> None:
        """Finish encodes at the head of the queue, in row order: every one already done, and
        waiting for more while over ``keep`` are pending (``keep=0`` waits for all)."""
        while self.pending and (self.pending[0][1].done() or len(self.pending) > keep):
            record, future = self.pending.popleft()
            data = future.result()
            record["sha256"] = hashlib.sha256(data).hexdigest()
            record["bytes"] = len(data)
            if self._tar is not None:
                member_meta = json.dumps(record, ensure_ascii=False, sort_keys=True).encode()
                self._add_member(record["image"], data)
                self._add_member(f"{record['key']}.json", member_meta)

    def _add_member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self._tar.addfile(info, io.BytesIO(data))

    def _record(self, row: Row, status: str, **extra: Any) -> dict[str, Any]:
        spec = self.spec
        record = {
            "key": row.key, "global_index": row.global_index, "shard": self.shard.shard_id,
            "prompt": row.prompt, "negative_prompt": row.negative_prompt, "seed": row.seed,
            "model": spec.model, "steps": spec.steps, "guidance_scale": spec.guidance_scale,
            "width": spec.width, "height": spec.height, "dtype": spec.dtype,
            "status": status, "error": None, "image": None, "sha256": None, "bytes": None,
            "render_ms": None, "truncated": None, "redecoded_fp32": None, "batch_size": None,
            "nan_count": None, "mean": None, "std": None, "dhash": None, "vae": spec.vae,
            "controlnet": spec.controlnet,
            "controlnet_scale": spec.controlnet_scale if spec.controlnet else None,
            "control_preprocess": spec.control_preprocess if spec.controlnet else None,
            "control_image": control_reference(row.control) if spec.controlnet else None,
        }  # fmt: skip
        record.update(extra)
        return record

    # -- commit ------------------------------------------------------------------------
    def commit(self, timings: dict[str, float], started: float,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        """Flush images, write metadata, then the done marker. Returns the marker.

        ``timings`` gain "commit" (this call up to the marker) and "total" (since ``started``,
        a ``time.perf_counter()`` value). ``extra``: more marker fields (the worker's start-up record).
        """
        commit_started = time.perf_counter()
        self._drain(keep=0)
        sid = self.shard.shard_id
        if self._tar is not None:
            self._tar.close()
            self._stack.close()  # renames / uploads the tar
            self.files[layout.tar_path(sid)] = {"bytes": self._tar_stream.size, "sha256": self._tar_stream.sha256.hexdigest()}
        self.records.sort(key=lambda r: r["global_index"])
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(self.records, schema=METADATA_SCHEMA), buf)
        self.out.write_bytes(layout.metadata_path(sid), buf.getvalue())
        self.files[layout.metadata_path(sid)] = {"bytes": buf.tell(), "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}
        ok = sum(r["status"] == "ok" for r in self.records)
        now = time.perf_counter()
        timings = {**timings, "commit": now - commit_started, "total": now - started}
        marker = {
            "shard": sid, "rows": len(self.records), "ok": ok, "error": len(self.records) - ok,
            "image_bytes": sum(r["bytes"] or 0 for r in self.records),
            "files": self.files, "spec_hash": self.spec.output_hash(),
            "timings_s": {k: round(v, 4) for k, v in timings.items()},
            **{k: self.origin.get(k) for k in ("worker", "node_id", "pid")},
            "committed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **(extra or {}),
        }  # fmt: skip
        if marker["rows"] != self.shard.num_rows:
            raise RuntimeError(f"shard {sid}: {marker['rows']} metadata rows for {self.shard.num_rows} input rows")
        if any(r["status"] == "ok" and r["sha256"] is None for r in self.records):
            raise RuntimeError(f"shard {sid}: an ok row has no written image")
        self.out.write_json(layout.done_path(sid), marker)
        return marker
