"""The job's one output schema: the columns turbobatch writes plus the kept input columns.

``--keep-columns`` is resolved once, on the driver, from the input footers (no data is read):
the names, and their Arrow types unified across the input files. The result travels to every
worker inside the ResolvedJob (``kept_schema``), so every metadata file, tar json member and data
Parquet of a job has the same column names and types in every shard, whatever values a shard
happens to hold (nulls are typed, never inferred), and the dataset card can declare it.

Kept types are those that survive JSON (the tar members' json) unchanged: integers, floats,
strings, bools and nulls, and lists and structs of them. A kept value therefore never fails a
row: types are checked before the job starts, and each shard casts its columns to the job's
types as whole columns (an input that does not match its own footer fails the shard, which is
recorded under _failed/ and retried by the next run, so no row is lost or written without its
values).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import sys
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from turbobatch.errors import JobError
from turbobatch.spec.expand import sweep_schema
from turbobatch.spec.job import KEEP_ALL, JobSpec
from turbobatch.spec.resolved import ResolvedJob

if TYPE_CHECKING:  # the input files are the driver's (jobs/prepare); only their type is needed here
    from turbobatch.jobs.prepare.inputs import InputFile

METADATA_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("global_index", pa.int64()),
        ("image_index", pa.int32()),
        ("combination", pa.int32()),
        ("shard", pa.int64()),
        ("prompt", pa.string()),
        ("negative_prompt", pa.string()),
        ("template", pa.string()),
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
        # img2img and LoRA: the init image (path/URL or bytes:sha256:...), its source size,
        # the strength and resize mode; the LoRAs applied, "name=source:scale" joined by ";"
        ("init_image", pa.string()),
        ("init_width", pa.int32()),
        ("init_height", pa.int32()),
        ("strength", pa.float64()),
        ("resize_mode", pa.string()),
        ("lora", pa.string()),
    ]
)
# A Hugging Face `datasets` Image value as Arrow stores it: the encoded bytes and a file name.
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
# Columns `datasets` adds when it reads the tars: a kept column may not take their names either.
READER_COLUMNS = ("__key__", "__url__")
WRITTEN_COLUMNS = frozenset(METADATA_SCHEMA.names) | frozenset(READER_COLUMNS)
# Input columns the job uses that turbobatch writes under their own name: keeping one of these
# is no clash, the output carries it already (the key sanitized, the seed as used).
_SAME_NAME_ROLES = {
    "prompt_column": "prompt",
    "negative_prompt_column": "negative_prompt",
    "seed_column": "seed",
    "key_column": "key",
    "steps_column": "steps",
    "guidance_scale_column": "guidance_scale",
    "width_column": "width",
    "height_column": "height",
}
_VALID_TYPES = "integers, floats, strings, bools or nulls, or lists or structs of them"


def with_kept_columns(files: list[InputFile], spec: JobSpec) -> tuple[JobSpec, str | None]:
    """The spec with ``keep_columns`` resolved to names, and their types: the job's kept schema
    (encoded for ``ResolvedJob.kept_schema``; None when no column is kept).

    Raises JobError naming the column, the file and what is valid: a kept column missing from a
    file, clashing with a written column, of a type JSON cannot carry, or of conflicting types.
    ``'*'`` asks for every column that can be kept, so it skips the names turbobatch writes and
    says so once on stderr (the driver resolves this once per job) instead of failing.
    """
    kept = resolve_kept_schema(files, spec)
    if note := star_skipped_note(files, spec):
        print(note, file=sys.stderr)
    names = ",".join(kept.names) or None
    return dataclasses.replace(spec, keep_columns=names), encode_schema(kept) if kept.names else None


def resolve_kept_schema(files: list[InputFile], spec: JobSpec) -> pa.Schema:
    names = _requested_names(files, spec)
    for name in names:
        for f in files:
            if name not in f.columns:
                raise JobError(
                    f"--keep-columns: column {name!r} is not in {f.url}; its columns are: "
                    f"{', '.join(f.columns) or '(none)'}"
                )
    _check_no_clash(names, files, spec)
    return pa.schema([pa.field(name, _unified_type(name, files)) for name in names])


def star_skipped_note(files: list[InputFile], spec: JobSpec) -> str | None:
    """The one line that tells a ``'*'`` user which input columns were not kept and why (None: all were)."""
    if spec.keep_columns != KEEP_ALL:
        return None
    skipped = [name for name in _unused_columns(files, spec) if name in _written_columns(spec)]
    if not skipped:
        return None
    one = len(skipped) == 1
    return (
        f"turbobatch: --keep-columns '*' does not keep input column{'' if one else 's'} {', '.join(skipped)}: "
        f"turbobatch writes a column of {'that name' if one else 'those names'} (rename "
        f"{'it' if one else 'them'} in the input to keep {'it' if one else 'them'})"
    )


def _written_columns(spec: JobSpec) -> frozenset[str]:
    """Every column name the job's output has without kept columns (the sweep adds ``sweep_<name>``)."""
    return WRITTEN_COLUMNS | frozenset(sweep_schema(spec).names)


def _used_columns(spec: JobSpec) -> set[str]:
    """Input columns the job reads for rendering ('*' leaves them out; a template's columns stay in:
    they are the row's labels, and the prompt made from them is another column)."""
    return {
        spec.prompt_column,
        spec.negative_prompt_column,
        spec.seed_column,
        spec.key_column,
        spec.control_image_column,
        spec.init_image_column,
        spec.strength_column,
        spec.lora_column,
        *spec.sampling_columns.values(),
    } - {None}


def _unused_columns(files: list[InputFile], spec: JobSpec) -> list[str]:
    """Every input column, in file order, that the job does not read for rendering."""
    every = dict.fromkeys(name for f in files for name in f.columns)
    return [name for name in every if name not in _used_columns(spec)]


def _requested_names(files: list[InputFile], spec: JobSpec) -> list[str]:
    if not spec.keep_columns:
        return []
    if spec.keep_columns == KEEP_ALL:
        written = _written_columns(spec)
        return [name for name in _unused_columns(files, spec) if name not in written]
    carried = {getattr(spec, role) for role, out in _SAME_NAME_ROLES.items() if getattr(spec, role) == out}
    return [name for name in spec.keep_columns.split(",") if name not in carried]


def _check_no_clash(names: list[str], files: list[InputFile], spec: JobSpec) -> None:
    written = _written_columns(spec)
    for name in names:
        if name in written:
            where = next(f.url for f in files if name in f.columns)
            used = _used_columns(spec)
            allowed = [n for n in files[0].columns if n not in written and n not in used]
            raise JobError(
                f"--keep-columns: column {name!r} of {where} has the name of a column turbobatch writes; "
                f"rename it in the input, or keep other columns (columns that can be kept: "
                f"{', '.join(allowed) or '(none)'}; turbobatch writes: {', '.join(sorted(written))})"
            )


def _unified_type(name: str, files: list[InputFile]) -> pa.DataType:
    """The column's one type over every file: null (an all-null column) gives way to any type,
    dictionary-encoded strings are strings; anything else must be the same everywhere."""
    unified: pa.DataType | None = None
    first = ""
    for f in files:
        kind = normalize_type(f.schema.field(name).type)
        if kind is None:
            raise JobError(
                f"--keep-columns: column {name!r} in {f.url} has type {f.columns[name]}; a kept column "
                f"must hold {_VALID_TYPES} (cast it in the input, e.g. to a string)"
            )
        merged = kind if unified is None else _unify(unified, kind)
        if merged is None:
            raise JobError(
                f"--keep-columns: column {name!r} has type {unified} in {first} but {kind} in {f.url}; "
                "a kept column must have one type in every input file"
            )
        if unified is None or pa.types.is_null(unified):
            first = f.url
        unified = merged
    return unified


def normalize_type(t: pa.DataType) -> pa.DataType | None:
    """The type a kept column is written with (None: not keepable). Strings of every layout
    become ``string``, variable lists ``list<item>``: the same values, one spelling."""
    if pa.types.is_dictionary(t):
        return normalize_type(t.value_type)
    if pa.types.is_null(t) or pa.types.is_boolean(t) or pa.types.is_integer(t):
        return t
    if pa.types.is_float32(t) or pa.types.is_float64(t):
        return t
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        item = normalize_type(t.value_type)
        if item is None:
            return None
        return pa.list_(item, t.list_size) if pa.types.is_fixed_size_list(t) else pa.list_(item)
    if pa.types.is_struct(t):
        children = [(t.field(i).name, normalize_type(t.field(i).type)) for i in range(t.num_fields)]
        return None if any(c is None for _, c in children) else pa.struct(children)
    return None


def _unify(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    if pa.types.is_null(a):
        return b
    if pa.types.is_null(b) or a == b:
        return a
    if pa.types.is_struct(a) and pa.types.is_struct(b) and [f.name for f in a] == [f.name for f in b]:
        children = [(fa.name, _unify(fa.type, fb.type)) for fa, fb in zip(a, b)]
        return None if any(c is None for _, c in children) else pa.struct(children)
    same_list = (pa.types.is_list(a) and pa.types.is_list(b)) or (
        pa.types.is_fixed_size_list(a) and pa.types.is_fixed_size_list(b) and a.list_size == b.list_size
    )
    if same_list:
        item = _unify(a.value_type, b.value_type)
        return None if item is None else pa.list_(item, a.list_size if pa.types.is_fixed_size_list(a) else -1)
    return None


# -- the schema as it travels in the spec, and the schemas of the written files ------------------
def encode_schema(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


@functools.lru_cache(maxsize=8)
def _decode_schema(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def kept_schema(spec: ResolvedJob) -> pa.Schema:
    """The kept columns and their types, as the driver resolved them (empty without any)."""
    return _decode_schema(spec.kept_schema) if spec.kept_schema else pa.schema([])


def metadata_schema(kept: pa.Schema, swept: pa.Schema = pa.schema([])) -> pa.Schema:
    """metadata/SSSSSS.parquet and the tar json members: every written field, the sweep's values
    (``sweep_<name>``, spec/expand.py), then the kept columns."""
    return pa.schema([*METADATA_SCHEMA, *swept, *kept])


def data_schema(kept: pa.Schema, swept: pa.Schema = pa.schema([])) -> pa.Schema:
    """data/SSSSSS.parquet (--format parquet), one row per ok image: the image as a `datasets`
    Image value (its ``path`` is the tar member name), key, prompt, seed, the sweep's values, the
    kept columns, then the other metadata fields."""
    first = ("key", "prompt", "seed")
    rest = [f for f in METADATA_SCHEMA if f.name not in first and f.name != "image"]
    return pa.schema([pa.field("image", IMAGE_TYPE), *(METADATA_SCHEMA.field(n) for n in first), *swept, *kept, *rest])


def job_metadata_schema(spec: ResolvedJob) -> pa.Schema:
    """The job's one metadata schema (kept columns and sweep resolved from the spec)."""
    return metadata_schema(kept_schema(spec), sweep_schema(spec))


def job_data_schema(spec: ResolvedJob) -> pa.Schema:
    return data_schema(kept_schema(spec), sweep_schema(spec))


def kept_values(table: pa.Table, kept: pa.Schema) -> list[dict[str, Any]]:
    """Each row's kept values, cast to the job's types (raises if the file breaks its footer)."""
    if not kept.names:
        return [{} for _ in range(table.num_rows)]
    arrays = [table.column(f.name).cast(f.type) for f in kept]
    return pa.Table.from_arrays(arrays, schema=kept).to_pylist()
