"""The one I/O entry point: a folder over fsspec (URL plus storage options).

Every read and write of job data goes through :class:`Folder`, so local paths, ``s3://``,
``gs://`` and friends behave the same. Writes are atomic: local files are written under a
temporary name and renamed; object stores get one whole PUT (or a completed multipart upload).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

TEMP_MARK = ".tmp-"


class Folder:
    """A folder URL plus storage options; paths given to its methods are relative to it."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/") or url
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.root = self.root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"Folder({self.url!r})"

    @property
    def absolute_url(self) -> str:
        """The folder as a URL that means the same from any working directory."""
        return self.fs.unstrip_protocol(self.root) if self.is_local else self.url

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def display(self, rel: str = "") -> str:
        """A URL for messages (never includes storage options)."""
        return f"{self.url}/{rel}" if rel else self.url

    # -- reads -------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def list_names(self, rel: str) -> list[str]:
        """Names (not paths) directly under ``rel``; empty if it does not exist. One listing."""
        try:
            entries = self.fs.ls(self.path(rel), detail=False)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    # -- writes ------------------------------------------------------------------------
    @contextlib.contextmanager
    def atomic_writer(self, rel: str) -> Iterator[IO[bytes]]:
        """A binary file that appears at ``rel`` whole, or not at all if the block raises."""
        if self.is_local:
            final = self.path(rel)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            tmp = f"{final}{TEMP_MARK}{uuid.uuid4().hex}"
            try:
                with open(tmp, "wb") as f:
                    yield f
                os.replace(tmp, final)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        else:
            with tempfile.NamedTemporaryFile(prefix="turbobatch-", suffix=".part") as f:
                yield f
                f.flush()
                self.fs.put_file(f.name, self.path(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.atomic_writer(rel) as f:
            f.write(data)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False).encode())

    def remove_tree(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.rm(self.path(rel), recursive=True)
