"""What every sink shares: the protocol the writer (workers/writer.py) drives, and the hashing writer
that gives the done marker each streamed object's sha256 and size without reading it back.

The writer hands a sink every ok image in render order, as its encode finishes; ``close``
completes the sink's objects and returns what the done marker records of them (path -> bytes and
sha256), before the marker is written.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any, Protocol

import numpy as np


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
