"""Cut the job's images into shards in a fixed order, and fingerprint what the output depends on.

Order: sorted file URLs, then row order within a file; every row gets a stable global index, and
each row's images (spec/expand.py: images per prompt x sweep combinations) follow in the image
index order. A shard is a contiguous range of image indices, ``shard_size`` long, so shards cost
the same however many images a row makes; it may cut a row's images in two, and it never spans
two files, so a worker reads one contiguous row range. The plan comes from the footers' row
counts alone: one entry per shard, never one per image.
"""

from __future__ import annotations

from typing import Any

from turbobatch.jobs.prepare.inputs import InputFile
from turbobatch.output.shard import Shard
from turbobatch.spec.resolved import ResolvedJob


def make_plan(files: list[InputFile], shard_size: int, images_per_row: int = 1) -> list[Shard]:
    """Shards of ``shard_size`` images, file by file; each names the rows its images come from."""
    total = sum(f.num_rows for f in files)
    key_width = max(9, len(str(total - 1)))
    shards: list[Shard] = []
    global_index = 0
    for f in files:
        first_image = global_index * images_per_row
        for start in range(0, f.num_rows * images_per_row, shard_size):  # image offsets within the file
            end = min(start + shard_size, f.num_rows * images_per_row)
            row_start, row_end = start // images_per_row, (end - 1) // images_per_row + 1
            shards.append(
                Shard(
                    len(shards),
                    f.url,
                    row_start,
                    row_end,
                    global_index + row_start,
                    key_width,
                    first_image + start,
                    first_image + end,
                )
            )
        global_index += f.num_rows
    return shards


def fingerprint(files: list[InputFile], spec: ResolvedJob) -> dict[str, Any]:
    """What the output depends on: the inputs (paths below INPUT, sizes, rows) and the output fields."""
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
        return old_spec[name] if name in old_spec else ResolvedJob.legacy_value(name, old_spec)

    changes = [
        f"{_option(name)}: {before(name)!r} -> {value!r}"
        for name, value in new["spec"].items()
        if before(name) != value
    ]
    # Inputs are compared by their path below INPUT's folder, so a dataset that moved (a new
    # --working-dir upload, a copied bucket) is the same input; outputs made before names were
    # recorded compare full URLs.
    old_inputs = old.get("inputs", [])
    key = "name" if all("name" in f for f in old_inputs) else "url"
    old_files = {f[key]: f for f in old_inputs}
    new_files = {f[key]: f for f in new["inputs"]}
    changes += [f"input removed: {name}" for name in sorted(old_files.keys() - new_files.keys())]
    changes += [f"input added: {name}" for name in sorted(new_files.keys() - old_files.keys())]
    changes += [
        f"input changed: {name} (size {old_files[name]['size']} -> {f['size']}, "
        f"rows {old_files[name]['num_rows']} -> {f['num_rows']})"
        for name, f in sorted(new_files.items())
        if name in old_files and (old_files[name]["size"], old_files[name]["num_rows"]) != (f["size"], f["num_rows"])
    ]
    return changes
