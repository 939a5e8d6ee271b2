"""Names of every object in an output folder, derived from the shard id and row key only.

A redone shard therefore overwrites its own objects and never leaves a second copy.
"""

from __future__ import annotations

SPEC = "_job/spec.json"
PLAN = "_job/plan.json"
DONE_DIR = "_done"
FAILED_DIR = "_failed"
OUTPUT_DIRS = ("_job", "_done", "_failed", "shards", "images", "metadata")
# Flat folders where a killed writer can leave a temp file (storage.TEMP_MARK in its name).
TEMP_LEFTOVER_DIRS = ("_job", "_done", "_failed", "shards", "metadata")


def shard_name(shard_id: int) -> str:
    return f"{shard_id:06d}"


def tar_path(shard_id: int) -> str:
    return f"shards/{shard_name(shard_id)}.tar"


def image_path(shard_id: int, key: str, ext: str) -> str:
    return f"{image_dir(shard_id)}/{key}.{ext}"


def metadata_path(shard_id: int) -> str:
    return f"metadata/{shard_name(shard_id)}.parquet"


def done_path(shard_id: int) -> str:
    return f"{DONE_DIR}/{shard_name(shard_id)}.json"


def failed_path(shard_id: int) -> str:
    return f"{FAILED_DIR}/{shard_name(shard_id)}.json"


def image_dir(shard_id: int) -> str:
    return f"images/{shard_name(shard_id)}"


def shard_id_from_marker_name(name: str) -> int | None:
    """``000123.json`` (in _done/ or _failed/) -> 123; anything else (temp files, strays) -> None."""
    base = name.rsplit("/", 1)[-1]
    stem, dot, ext = base.partition(".")
    if ext != "json" or not stem.isdigit():
        return None
    return int(stem)
