"""Where a shard's images go, one sink per ``--format``: a WebDataset tar, one file per image, or
a data Parquet (workers/sinks/parquet.py).

The writer (workers/writer.py) hands each sink every ok image in render order, as its encode
finishes; ``close`` completes the sink's objects and returns what the done marker records of
them (path -> bytes and sha256), before the marker is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tarfile
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any, Protocol

import numpy as np

from turbobatch.output import layout
from turbobatch.jobs.prepare.plan import Shard
from turbobatch.spec.job import JobSpec
from turbobatch.output.storage import TEMP_MARK, Folder
from turbobatch.workers.sinks.encode import encode_image


class HashingWriter:
    """A write-only file that hashes and counts what passes through it (the marker's checksum
    of an object streamed while it is written, without reading it back)."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target, self.sha256, self.size = target, hashlib.sha256(), 0
        self.closed = False

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.target.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.target.flush()

    def close(self) -> None:  # the atomic writer that owns the target closes it
        self.closed = True

    def entry(self) -> dict[str, Any]:
        return {"bytes": self.size, "sha256": self.sha256.hexdigest()}


def file_entry(data: bytes) -> dict[str, Any]:
    """What a done marker records of one object."""
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


class ImageSink(Protocol):
    def submit(self, pool: ThreadPoolExecutor, image: np.ndarray, record: dict[str, Any]) -> Future[bytes]:
        """Start the image's encode (and, for files, its write) on ``pool``; sets record["image"]."""

    def add(self, record: dict[str, Any], data: bytes) -> None:
        """Called in render order once the encode is done and the record has its sha256 and bytes."""

    def close(self) -> dict[str, dict[str, Any]]:
        """Complete the shard's objects; returns path -> {"bytes", "sha256"} for the marker."""


def open_sink(out: Folder, shard: Shard, spec: JobSpec, stack: contextlib.ExitStack) -> ImageSink:
    """The sink of ``spec.format``; its temp objects are discarded if ``stack`` exits by an error."""
    if spec.format == "tar":
        return TarSink(out, shard, spec, stack)
    if spec.format == "parquet":
        from turbobatch.workers.sinks.parquet import DataParquetSink

        return DataParquetSink(out, shard, spec, stack)
    return FilesSink(out, shard, spec)


def encode(spec: JobSpec, image: np.ndarray) -> bytes:
    return encode_image(image, spec.image_format, spec.effective_quality)


class TarSink:
    """shards/SSSSSS.tar, streamed as images arrive: ``<key>.<ext>`` then ``<key>.json`` (every
    metadata field, null where empty), mtime 0 so a redone shard gives the same bytes."""

    def __init__(self, out: Folder, shard: Shard, spec: JobSpec, stack: contextlib.ExitStack) -> None:
        self.spec, self.stack, self.rel = spec, stack, layout.tar_path(shard.shard_id)
        self.stream = HashingWriter(stack.enter_context(out.atomic_writer(self.rel)))
        self.tar = tarfile.open(fileobj=self.stream, mode="w|", format=tarfile.PAX_FORMAT)

    def submit(self, pool: ThreadPoolExecutor, image: np.ndarray, record: dict[str, Any]) -> Future[bytes]:
        record["image"] = f"{record['key']}.{self.spec.image_extension}"
        return pool.submit(encode, self.spec, image)

    def add(self, record: dict[str, Any], data: bytes) -> None:
        self._member(record["image"], data)
        self._member(f"{record['key']}.json", json.dumps(record, ensure_ascii=False, sort_keys=True).encode())

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self.tar.addfile(info, io.BytesIO(data))

    def close(self) -> dict[str, dict[str, Any]]:
        self.tar.close()
        self.stack.close()  # renames / uploads the tar
        return {self.rel: self.stream.entry()}


class FilesSink:
    """images/SSSSSS/<key>.<ext>, each written whole by the encode thread. The marker does not
    list them: the shard's metadata (which it does list) holds each image's sha256 and bytes."""

    def __init__(self, out: Folder, shard: Shard, spec: JobSpec) -> None:
        self.out, self.shard, self.spec = out, shard, spec
        if out.is_local:
            self._remove_temp_leftovers()

    def _remove_temp_leftovers(self) -> None:
        """Temp files a killed attempt at this shard left in its image folder (local disks only:
        object stores get whole PUTs, never temp objects)."""
        folder = layout.image_dir(self.shard.shard_id)
        for name in self.out.list_names(folder):
            if TEMP_MARK in name:
                self.out.remove_file(f"{folder}/{name}")

    def submit(self, pool: ThreadPoolExecutor, image: np.ndarray, record: dict[str, Any]) -> Future[bytes]:
        record["image"] = layout.image_path(self.shard.shard_id, record["key"], self.spec.image_extension)
        return pool.submit(self._encode_and_write, image, record["image"])

    def _encode_and_write(self, image: np.ndarray, rel: str) -> bytes:
        data = encode(self.spec, image)
        self.out.write_bytes(rel, data)
        return data

    def add(self, record: dict[str, Any], data: bytes) -> None:
        pass  # already written by the encode thread

    def close(self) -> dict[str, dict[str, Any]]:
        return {}
