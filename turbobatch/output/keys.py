"""Row keys: the names of a row's output objects.

A key is the input's key column (sanitized) if the spec names one, else the row's global index,
zero-padded. Sanitized keys hold only letters, digits and ``-_=+@,`` so they are safe as file
names and as WebDataset sample keys (which split at the first dot).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pyarrow.parquet as pq

from turbobatch.errors import JobError
from turbobatch.jobs.prepare.inputs import InputFile
from turbobatch.output.storage import open_fs

MAX_KEY_CHARS = 120
_UNSAFE = re.compile(r"[^\w\-=+@,]", re.UNICODE)


def index_key(global_index: int, width: int) -> str:
    return f"{global_index:0{width}d}"


def sanitize_key(raw: Any) -> str | None:
    """Key column value -> safe key, or None when the value cannot name a row."""
    if raw is None:
        return None
    text = _UNSAFE.sub("_", str(raw))
    if len(text) > MAX_KEY_CHARS:  # keep it a valid file name, and still unique
        digest = hashlib.sha256(str(raw).encode("utf-8", "surrogatepass")).hexdigest()[:16]
        text = f"{text[: MAX_KEY_CHARS - 17]}_{digest}"
    return text or None


def check_unique_keys(files: list[InputFile], column: str, storage_options: dict[str, Any] | None = None) -> None:
    """Read only the key column of every file; null or duplicate keys stop the job."""
    seen: dict[str, str] = {}
    for f in files:
        fs, path = open_fs(f.url, storage_options)
        with fs.open(path, "rb") as handle:
            values = pq.read_table(handle, columns=[column]).column(column).to_pylist()
        for row, raw in enumerate(values):
            key = sanitize_key(raw)
            where = f"{f.url} row {row}"
            if key is None:
                raise JobError(f"--key-column: {column!r} is null or empty at {where}; every row needs a key")
            if key in seen:
                raise JobError(
                    f"--key-column: {column!r} value {raw!r} (key {key!r}) at {where} duplicates {seen[key]}; "
                    "keys must be unique after sanitizing (characters other than letters, digits and "
                    "-_=+@, become _)"
                )
            seen[key] = where
