"""Cut the input rows into shards in a fixed order, and fingerprint what the output depends on.

Order: sorted file URLs, then row order within a file. A shard never spans two files, so a
worker reads one contiguous row range. Every row gets a stable global index.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from jobs.inputs import InputFile
from jobs.spec import JobSpec


@dataclass(frozen=True)
class Shard:
    shard_id: int
    file: str  # URL of the Parquet file
    row_start: int  # first row in the file (inclusive)
    row_end: int  # last row in the file (exclusive)
    first_index: int  # global index of row_start
    key_width: int  # digits of zero-padded index keys, the same for the whole job

    @property
    def num_rows(self) -> int:
        return self.row_end - self.row_start

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_plan(files: list[InputFile], shard_size: int) -> list[Shard]:
    total = sum(f.num_rows for f in files)
    key_width = max(9, len(str(total - 1)))
    shards: list[Shard] = []
    global_index = 0
    for f in files:
        for start in range(0, f.num_rows, shard_size):
            end = min(start + shard_size, f.num_rows)
            shards.append(Shard(len(shards), f.url, start, end, global_index + start, key_width))
        global_index += f.num_rows
    return shards


def fingerprint(files: list[InputFile], spec: JobSpec) -> dict[str, Any]:
    """What the output depends on: the inputs (paths, sizes, rows) and the output fields."""
    return {"inputs": [f.fingerprint() for f in files], "spec": spec.output_fields()}


def _option(name: str) -> str:
    """The option behind a fingerprint field: ``--steps``; the variants resolved from ``--variant``."""
    if name.endswith("_variant"):
        return f"--variant ({name.removesuffix('_variant')} weights)"
    return f"--{name.replace('_', '-')}"


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints."""
    old_spec = old.get("spec", {})

    def before(name: str) -> Any:  # a field added since the output was made: the value it was made with
        return old_spec[name] if name in old_spec else JobSpec.legacy_value(name, old_spec)

    changes = [
        f"{_option(name)}: {before(name)!r} -> {value!r}"
        for name, value in new["spec"].items()
        if before(name) != value
    ]
    old_files = {f["url"]: f for f in old.get("inputs", [])}
    new_files = {f["url"]: f for f in new["inputs"]}
    changes += [f"input removed: {url}" for url in sorted(old_files.keys() - new_files.keys())]
    changes += [f"input added: {url}" for url in sorted(new_files.keys() - old_files.keys())]
    changes += [
        f"input changed: {url} (size {old_files[url]['size']} -> {f['size']}, "
        f"rows {old_files[url]['num_rows']} -> {f['num_rows']})"
        for url, f in sorted(new_files.items())
        if url in old_files and old_files[url] != f
    ]
    return changes
