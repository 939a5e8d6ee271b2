"""Plan-time check of the key column: every sanitized key unique across all input files, or the job
stops before any actor starts (a duplicate would make two rows write one object)."""

from __future__ import annotations

from typing import Any

import pyarrow.parquet as pq

from turbobatch.errors import JobError
from turbobatch.jobs.prepare.inputs import InputFile
from turbobatch.output.keys import sanitize_key
from turbobatch.output.storage import open_fs


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
