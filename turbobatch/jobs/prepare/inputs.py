"""Find the input Parquet files and read only their footers (row counts, schema)."""

from __future__ import annotations

import glob as globlib
import os
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from turbobatch.errors import JobError
from turbobatch.jobs.prepare.globs import may_overlap
from turbobatch.output import layout
from turbobatch.output.storage import (
    Folder,
    base_folder,
    bucket_of,
    check_endpoint,
    describe_error,
    endpoint_of,
    open_fs,
)
from turbobatch.spec.job import JobSpec
from turbobatch.spec.template import PROMPT_FIELD, template_of
from turbobatch.spec.template import check_columns as check_template_columns


@dataclass(frozen=True)
class InputFile:
    url: str  # full fsspec URL, openable by any worker
    size: int
    num_rows: int
    columns: dict[str, str]  # column name -> Arrow type, as text
    schema: pa.Schema | None = field(default=None, compare=False, repr=False)  # the footer's Arrow schema
    # The path below INPUT's folder (a file's own name; for a glob, below the folder before the
    # first wildcard): what resume compares, so a dataset that moved — `ray job submit
    # --working-dir` unpacks it in a new folder at every submission — is the same input.
    name: str = ""

    def fingerprint(self) -> dict[str, Any]:
        return {"url": self.url, "name": self.name or self.url, "size": self.size, "num_rows": self.num_rows}


def scan_inputs(url: str, storage_options: dict[str, Any] | None = None) -> list[InputFile]:
    """List the Parquet files behind ``url`` (file, folder or glob) in sorted order."""
    try:
        check_endpoint(url, storage_options)
        fs, root = open_fs(url, storage_options)
        paths = _list_paths(fs, root, url)
        base = base_folder(fs, root)
        files = [
            _read_footer(fs, path, path[len(base) + 1 :] if path.startswith(base + "/") else path) for path in paths
        ]
    except JobError:
        raise
    except Exception as e:  # noqa: BLE001 - storage failures become named job errors
        raise JobError(f"input: {describe_error(e, url, storage_options)}") from None
    if sum(f.num_rows for f in files) == 0:
        raise JobError(f"input: {url} has no rows ({len(files)} Parquet file(s), all empty)")
    return files


def check_output_apart(url: str, storage_options: dict[str, Any] | None, out: Folder) -> None:
    """JobError when a file the run writes in ``out`` could be one of the input's files: the output IS
    the input or lies inside it (a folder takes every ``*.parquet`` below it), the input's glob can match
    a written name (fsspec's glob semantics: a ``**`` glob reaches into subfolders), or the input lies
    among the output's own files. Such a run reads its own metadata as prompts at the resume, and
    --overwrite would delete its input. Compares paths only (nothing is read): before anything is written."""
    try:
        fs, root = open_fs(url, storage_options)
    except Exception:  # noqa: BLE001 - a URL fsspec cannot open: scan_inputs names it
        return
    if type(fs) is not type(out.fs) or endpoint_of(storage_options) != endpoint_of(out.storage_options):
        return  # another store: nothing the run writes can be read as input
    root, out_root = _real(fs, root.rstrip("/")), _real(out.fs, out.root)
    patterns = [root] if globlib.has_magic(root) else [globlib.escape(root), globlib.escape(root) + "/**"]
    try:
        hit = next(
            (
                name
                for name in layout.written_globs()
                for pattern in patterns
                if may_overlap(pattern, f"{globlib.escape(out_root)}/{name}")
            ),
            None,
        )
    except ValueError:  # a glob fsspec rejects: scan_inputs names it
        return
    if hit is None:
        return
    if len(patterns) == 1:
        where = f"output: the input glob {url} matches files the run writes in {out.display()}"
    elif out_root == root:
        where = f"output: {out.display()} is the input {url}"
    elif out_root.startswith(root + "/"):
        where = f"output: {out.display()} lies inside the input {url}"
    else:
        where = f"output: the input {url} lies among the files the run writes in {out.display()}"
    raise JobError(
        f"{where}: the run's own files ({out.display(hit)}) would become its input. "
        "Use an output folder outside the input."
    )


def _real(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A local path with its symlinks resolved (two spellings of one folder are one folder); others as they are."""
    return os.path.realpath(path) if isinstance(fs, LocalFileSystem) else path


def _list_paths(fs: fsspec.AbstractFileSystem, root: str, url: str) -> list[str]:
    if globlib.has_magic(root):
        paths = sorted(p for p in fs.glob(root) if fs.isfile(p))
        if not paths:
            raise JobError(f"input: the glob {url} matches no files")
        return paths
    if fs.isdir(root):
        prefix = root.rstrip("/") + "/"
        paths = sorted(p for p in fs.find(root) if p.endswith(".parquet") and not _is_hidden(p[len(prefix) :]))
        if not paths:
            raise JobError(f"input: the folder {url} holds no *.parquet files")
        return paths
    if fs.isfile(root):
        return [root]
    if not isinstance(fs, LocalFileSystem) and not fs.exists(bucket_of(url)):
        raise JobError(f"input: bucket {bucket_of(url)!r} does not exist (input {url})")
    raise JobError(f"input: {url} does not exist (expected a Parquet file, a folder or a glob)")


def _is_hidden(rel: str) -> bool:
    """Spark/Hive markers and temp files (_SUCCESS, .part-0.crc, _tmp/...) are not data."""
    return any(part.startswith(("_", ".")) for part in rel.split("/"))


def _read_footer(fs: fsspec.AbstractFileSystem, path: str, name: str) -> InputFile:
    url = fs.unstrip_protocol(path)
    try:
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
            schema = meta.schema.to_arrow_schema()
    except pa.ArrowInvalid as e:
        raise JobError(f"input: {url} is not a readable Parquet file ({e})") from None
    return InputFile(
        url=url,
        size=int(fs.size(path)),
        num_rows=meta.num_rows,
        columns={f.name: str(f.type) for f in schema},
        schema=schema,
        name=name,
    )


_TEXT_TYPES = ("string", "large_string", "string_view", "null")  # null: an all-null column
_CONTROL_TYPES = _TEXT_TYPES + ("binary", "large_binary", "binary_view")
_SEED_TYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float", "double", "null")


def check_columns(files: list[InputFile], spec: JobSpec) -> None:
    """Every column the spec names must exist in every file, with a usable type."""
    template = template_of(spec)
    swept = {name for name, _ in spec.sweep or []}
    required = []
    if template is None or PROMPT_FIELD in template.columns(spec, swept):  # a template may not use {prompt}
        required.append(("prompt-column", spec.prompt_column, _TEXT_TYPES))
    if spec.negative_prompt_column:
        required.append(("negative-prompt-column", spec.negative_prompt_column, _TEXT_TYPES))
    if spec.key_column:
        required.append(("key-column", spec.key_column, None))
    if spec.control_image_column:
        required.append(("control-image-column", spec.control_image_column, _CONTROL_TYPES))
    for name, column in spec.sampling_columns.items():  # numbers, or text holding them ("4")
        required.append((f"{name.replace('_', '-')}-column", column, _SEED_TYPES + _TEXT_TYPES))
    for f in files:
        for flag, column, types in required:
            _check_column(f, flag, column, types, required=True)
        # The default seed column is used where present; one the user named must exist.
        _check_column(f, "seed-column", spec.seed_column, _SEED_TYPES, required=spec.seed_column != JobSpec.seed_column)
    check_template_columns(files, spec, swept)


def _check_column(f: InputFile, flag: str, column: str, types: tuple[str, ...] | None, required: bool) -> None:
    if column not in f.columns:
        if required:
            raise JobError(
                f"--{flag}: column {column!r} is not in {f.url}; its columns are: {', '.join(f.columns) or '(none)'}"
            )
        return
    kind = f.columns[column]
    base = kind.removeprefix("dictionary<values=").split(",")[0]
    if types is not None and base not in types:
        raise JobError(f"--{flag}: column {column!r} in {f.url} has type {kind}; expected one of {', '.join(types)}")
