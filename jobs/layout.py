"""Names of every object in an output folder, derived from the shard id and row key only.

A redone shard therefore overwrites its own objects and never leaves a second copy.
"""

from __future__ import annotations

SPEC = "_job/spec.json"
PLAN = "_job/plan.json"
DONE_DIR = "_done"
OUTPUT_DIRS = ("_job", "_done", "shards", "images", "metadata")


def shard_name(shard_id: int) -> str:
    return f"{shard_id:06d}"


def tar_path(shard_id: int) -> str:
    return f"shards/{shard_name(shard_id)}.tar"


def image_path(shard_id: int, key: str, ext: str) -> str:
    return f"images/{shard_name(shard_id)}/{key}.{ext}"


def metadata_path(shard_id: int) -> str:
    return f"metadata/{shard_name(shard_id)}.parquet"


def done_path(shard_id: int) -> str:
    return f"{DONE_DIR}/{shard_name(shard_id)}.json"


def shard_id_from_done_name(name: str) -> int | None:
    """``000123.json`` -> 123; anything else (temp files, strays) -> None."""
    base = name.rsplit("/", 1)[-1]
    stem, dot, ext = base.partition(".")
    if ext != "json" or not stem.isdigit():
        return None
    return int(stem)
