"""Read a shard's rows and turn each into a render task or an error record.

A bad row (null prompt, seed out of range, a bad per-row sampling value) fails alone: it becomes
a Row with ``error`` set and is written to metadata like any other row; it never stops the shard.
Each input row then becomes its images (workers/images.py), also Rows: the renderer and the
writer see one Row per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from turbobatch.output.columns import kept_schema, kept_values
from turbobatch.output.keys import index_key, sanitize_key
from turbobatch.output.shard import Shard
from turbobatch.output.storage import open_fs
from turbobatch.spec import sampling
from turbobatch.spec.resolved import ResolvedJob
from turbobatch.spec.sampling import MAX_SEED, SamplingParams
from turbobatch.spec.template import template_of
from turbobatch.workers.row_inputs import per_row_inputs


@dataclass
class Row:
    """An input row as read (``rows_from_table``), or one of its images (workers/images.py):
    one metadata row, rendered or an error."""

    global_index: int
    key: str
    prompt: str | None
    negative_prompt: str | None
    seed: int | None  # an input row: its image 0's seed (its own s, or job seed + g * N); an image: its seed
    error: str | None = None
    control: Any = None  # the control image column's value (path, URL or bytes)
    control_image: Any = None  # the loaded control image (PIL); preprocessed at its size for an image
    kept: dict[str, Any] = field(default_factory=dict)  # --keep-columns values, typed as the job's schema
    fields: dict[str, Any] = field(default_factory=dict)  # an input row: its template columns' values
    overrides: dict[str, Any] = field(default_factory=dict)  # an input row: sampling values its columns set
    # An image: which of its row's images it is, what it samples with (None: the job's parameters)
    # and the sweep's values for it.
    image_index: int = 0
    combination: int = 0
    params: SamplingParams | None = None
    swept: dict[str, Any] = field(default_factory=dict)
    # img2img and LoRA (workers/init_images.py, workers/lora_rows.py): the init image column's value,
    # the decoded image (resized to its size for an image) and its source size (width, height);
    # the row's strength (None: the job's) and LoRA name (None: none, or the job's fused set).
    init: Any = None
    init_image: Any = None
    init_size: tuple[int, int] | None = None
    strength: float | None = None
    lora: str | None = None


class ShardReader:
    """Reads a shard's rows: only its row groups, only the columns the spec uses.

    Keeps the last row groups it read: when a file has row groups much larger than a shard
    (one 10M-row group is common), consecutive shards reuse them instead of rereading.
    """

    def __init__(self, spec: ResolvedJob, storage_options: dict[str, Any] | None = None) -> None:
        self.spec = spec
        self.storage_options = storage_options or {}
        self._cache: tuple[tuple[str, tuple[int, ...]], int, pa.Table] | None = None

    def read(self, shard: Shard) -> pa.Table:
        spec = self.spec
        wanted = [
            spec.prompt_column,
            spec.negative_prompt_column,
            spec.seed_column,
            spec.key_column,
            spec.control_image_column,
            spec.init_image_column,
            spec.strength_column,
            spec.lora_column,
            *template_columns(spec).values(),
            *spec.sampling_columns.values(),
            *kept_schema(spec).names,
        ]
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


def template_columns(spec: ResolvedJob) -> dict[str, str]:
    """Template field -> the input column it reads (swept fields read none)."""
    template = template_of(spec)
    return template.columns(spec, {name for name, _ in spec.sweep or []}) if template else {}


def rows_from_table(table: pa.Table, shard: Shard, spec: ResolvedJob) -> list[Row]:
    columns = table.to_pydict()
    n = table.num_rows
    prompts = columns.get(spec.prompt_column, [None] * n)
    negatives = columns.get(spec.negative_prompt_column or "", [None] * n)
    seeds = columns.get(spec.seed_column, [None] * n)
    raw_keys = columns.get(spec.key_column or "", [None] * n)
    controls = columns.get(spec.control_image_column or "", [None] * n)
    kept = kept_values(table, kept_schema(spec))
    fields = template_columns(spec)
    templated = bool(spec.prompt_template)
    rows = []
    for i in range(n):
        index = shard.first_index + i
        key = sanitize_key(raw_keys[i]) if spec.key_column else index_key(index, shard.key_width)
        row = Row(
            index,
            key or index_key(index, shard.key_width),
            prompts[i],
            negatives[i],
            None,
            control=controls[i],
            kept=kept[i],
            fields={f: columns[c][i] for f, c in fields.items()},
        )
        row.seed, seed_error = _row_seed(seeds[i], spec.seed + index * spec.images_per_prompt)
        row.overrides, sampling_error = _row_sampling(columns, i, spec)
        prompt_error = "prompt is null" if row.prompt is None and not templated else None  # a template says itself
        row.error = prompt_error or seed_error or sampling_error or per_row_inputs(row, columns, i, spec)
        rows.append(row)
    return rows


def _row_sampling(columns: dict[str, list[Any]], i: int, spec: ResolvedJob) -> tuple[dict[str, Any], str | None]:
    """The sampling values row ``i``'s columns set (--steps-column, ...; null: the job's), checked
    as their flags are; or why one is not valid, naming the column, the value and the range (the
    parameter is then None: its error rows record no value rather than the job's)."""
    values: dict[str, Any] = {}
    for name, column in spec.sampling_columns.items():
        raw = columns[column][i]
        if raw is None or (isinstance(raw, float) and math.isnan(raw)):
            continue
        value = sampling.coerce(name, raw)
        if (why := sampling.problem(name, value)) is not None:
            return {**values, name: None}, f"{name} column {column!r}: {why}"  # metadata: null, not the job's
        values[name] = value
    return values, None


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
