"""Read a shard's rows and turn each into a render task or an error record.

A bad row (null prompt, seed out of range) fails alone: it becomes a Row with ``error`` set and
is written to metadata like any other row; it never stops the shard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.columns import kept_schema, kept_values
from jobs.keys import index_key, sanitize_key
from jobs.plan import Shard
from jobs.spec import MAX_SEED, JobSpec
from jobs.storage import open_fs


@dataclass
class Row:
    global_index: int
    key: str
    prompt: str | None
    negative_prompt: str | None
    seed: int | None
    error: str | None = None
    control: Any = None  # the control image column's value (path, URL or bytes)
    control_image: Any = None  # the loaded, preprocessed control image (PIL)
    kept: dict[str, Any] = field(default_factory=dict)  # --keep-columns values, typed as the job's schema


class ShardReader:
    """Reads a shard's rows: only its row groups, only the columns the spec uses.

    Keeps the last row groups it read: when a file has row groups much larger than a shard
    (one 10M-row group is common), consecutive shards reuse them instead of rereading.
    """

    def __init__(self, spec: JobSpec, storage_options: dict[str, Any] | None = None) -> None:
        self.spec = spec
        self.storage_options = storage_options or {}
        self._cache: tuple[tuple[str, tuple[int, ...]], int, pa.Table] | None = None

    def read(self, shard: Shard) -> pa.Table:
        spec = self.spec
        wanted = [spec.prompt_column, spec.negative_prompt_column, spec.seed_column, spec.key_column,
                  spec.control_image_column, *kept_schema(spec).names]  # fmt: skip
        fs, path = open_fs(shard.file, self.storage_options)
        with fs.open(path, "rb") as handle:
            pf = pq.ParquetFile(handle)
            groups, first_row = _row_groups_covering(pf.metadata, shard.row_start, shard.row_end)
            cache_key = (shard.file, tuple(groups))
            if self._cache is None or self._cache[0] != cache_key:
                present = set(pf.schema_arrow.names)
                columns = list(dict.fromkeys(c for c in wanted if c and c in present))
                self._cache = (cache_key, first_row, pf.read_row_groups(groups, columns=columns))
        _, first_row, table = self._cache
        return table.slice(shard.row_start - first_row, shard.num_rows)


def _row_groups_covering(meta: pq.FileMetaData, start: int, end: int) -> tuple[list[int], int]:
    groups, first_row, offset = [], None, 0
    for i in range(meta.num_row_groups):
        n = meta.row_group(i).num_rows
        if offset < end and offset + n > start:
            groups.append(i)
            first_row = offset if first_row is None else first_row
        offset += n
    return groups, first_row or 0


def rows_from_table(table: pa.Table, shard: Shard, spec: JobSpec) -> list[Row]:
    columns = table.to_pydict()
    n = table.num_rows
    prompts = columns.get(spec.prompt_column, [None] * n)
    negatives = columns.get(spec.negative_prompt_column or "", [None] * n)
    seeds = columns.get(spec.seed_column, [None] * n)
    raw_keys = columns.get(spec.key_column or "", [None] * n)
    controls = columns.get(spec.control_image_column or "", [None] * n)
    kept = kept_values(table, kept_schema(spec))
    rows = []
    for i in range(n):
        index = shard.first_index + i
        key = sanitize_key(raw_keys[i]) if spec.key_column else index_key(index, shard.key_width)
        row = Row(index, key or index_key(index, shard.key_width), prompts[i], negatives[i], None,
                  control=controls[i], kept=kept[i])  # fmt: skip
        row.seed, seed_error = _row_seed(seeds[i], spec.seed + index)
        row.error = "prompt is null" if row.prompt is None else seed_error
        rows.append(row)
    return rows


def _row_seed(value: Any, default: int) -> tuple[int | None, str | None]:
    """A row's seed: its own (validated), or job seed + global index when null."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return default, None
    if isinstance(value, float):
        if not value.is_integer():
            return None, f"seed {value!r} is not an integer"
        value = int(value)
    if not 0 <= value < MAX_SEED:
        return None, f"seed {value} is outside [0, 2**63)"
    return value, None
