"""Names of every object in an output folder, derived from the shard id and row key only.

A redone shard therefore overwrites its own objects and never leaves a second copy.
"""

from __future__ import annotations

from turbobatch.output.storage import TEMP_MARK
from turbobatch.spec.job import IMAGE_EXTENSIONS

SPEC = "_job/spec.json"
PLAN = "_job/plan.json"
WRITE_PROBE = "_job/.write-probe"  # written and removed by the first step of a run (jobs/prepare/resume.py)
# Summaries of committed shards' done markers, 1,000 shard ids each (output/summary.py: what status and the card
# read instead of every marker; each entry names the marker version it was read from).
SUMMARY_DIR = "_job/summary"
SUMMARY_BLOCK = 1000
DONE_DIR = "_done"
FAILED_DIR = "_failed"
CARD = "README.md"  # the dataset card (jobs/card.py), rewritten at the end of every run
OUTPUT_DIRS = ("_job", "_done", "_failed", "shards", "images", "data", "metadata")
# Folders of a shard's data objects (what verify checks and looks for orphans in).
DATA_DIRS = ("shards", "images", "data", "metadata")
# Flat folders where a killed writer can leave a temp file (storage.TEMP_MARK in its name).
TEMP_LEFTOVER_DIRS = ("_job", SUMMARY_DIR, "_done", "_failed", "shards", "data", "metadata")
# Every file a run may write below OUT, as fsspec globs ("*": a shard id or a key, never "/"); each may also
# appear as a temp file (TEMP_MARK and a suffix). An input that could match one would read the run's own
# files as prompts (jobs/prepare/inputs.py check_output_apart).
WRITTEN = (
    "metadata/*.parquet",
    "data/*.parquet",
    "shards/*.tar",
    f"{DONE_DIR}/*.json",
    f"{FAILED_DIR}/*.json",
    SPEC,
    PLAN,
    WRITE_PROBE,
    CARD,
    f"{SUMMARY_DIR}/*.json.gz",
    *(f"images/*/*.{ext}" for ext in sorted(IMAGE_EXTENSIONS.values())),
)
# What --overwrite removes: per folder, the suffix of a shard's file there and the kind the message names.
_SHARD_FILES = {
    DONE_DIR: (".json", "done marker"),
    FAILED_DIR: (".json", "failed marker"),
    "metadata": (".parquet", "metadata file"),
    "shards": (".tar", "tar shard"),
    "data": (".parquet", "data file"),
}


def shard_name(shard_id: int) -> str:
    return f"{shard_id:06d}"


def tar_path(shard_id: int) -> str:
    return f"shards/{shard_name(shard_id)}.tar"


def image_path(shard_id: int, key: str, ext: str) -> str:
    return f"{image_dir(shard_id)}/{key}.{ext}"


def data_path(shard_id: int) -> str:
    """--format parquet: the shard's images and their fields, one Hugging Face table."""
    return f"data/{shard_name(shard_id)}.parquet"


def metadata_path(shard_id: int) -> str:
    return f"metadata/{shard_name(shard_id)}.parquet"


def done_path(shard_id: int) -> str:
    return f"{DONE_DIR}/{shard_name(shard_id)}.json"


def failed_path(shard_id: int) -> str:
    return f"{FAILED_DIR}/{shard_name(shard_id)}.json"


def summary_path(block: int) -> str:
    """The summary of the done markers of shards ``block * SUMMARY_BLOCK`` to ``(block + 1) * SUMMARY_BLOCK - 1``."""
    return f"{SUMMARY_DIR}/{block:06d}.json.gz"


def image_dir(shard_id: int) -> str:
    return f"images/{shard_name(shard_id)}"


def written_globs() -> list[str]:
    """WRITTEN, each name also as the temp file its writer renames it from (storage.atomic_writer: TEMP_MARK
    and 32 hex digits, spelled out: "README.md.tmp-*" would also stand for "README.md.tmp-x.parquet")."""
    return [name for written in WRITTEN for name in (written, f"{written}{TEMP_MARK}{'[0-9a-f]' * 32}")]


def owned_kind(rel: str) -> str | None:
    """What a run wrote at ``rel`` (a path below OUT, in one of OUTPUT_DIRS), as --overwrite names it:
    "done marker", "metadata file", ..., "_job/", "temp file"; None for a name the layout never gives
    (a foreign file: --overwrite keeps it)."""
    base, mark, suffix = rel.rpartition(TEMP_MARK)
    if mark and len(suffix) == 32 and all(c in "0123456789abcdef" for c in suffix):  # storage.atomic_writer's
        return "temp file" if _kind(base) else None
    return _kind(rel)


def _kind(rel: str) -> str | None:
    if rel in (SPEC, PLAN, WRITE_PROBE):
        return "_job/"
    parts = rel.split("/")
    if rel.startswith(f"{SUMMARY_DIR}/") and len(parts) == 3 and _is_shard_name(parts[2].removesuffix(".json.gz")):
        return "_job/"
    if len(parts) == 3 and parts[0] == "images" and _is_shard_name(parts[1]):
        return "image file" if parts[2].rpartition(".")[2] in IMAGE_EXTENSIONS.values() else None
    if len(parts) == 2 and parts[0] in _SHARD_FILES:
        suffix, kind = _SHARD_FILES[parts[0]]
        return kind if parts[1].endswith(suffix) and _is_shard_name(parts[1][: -len(suffix)]) else None
    return None


def _is_shard_name(stem: str) -> bool:
    """shard_name's form: six digits or more."""
    return stem.isdigit() and len(stem) >= 6


def shard_id_from_name(name: str) -> int | None:
    """``000123.tar`` / ``000123.parquet`` / ``000123`` (an image folder) -> 123; else None."""
    stem, _, ext = name.rsplit("/", 1)[-1].partition(".")
    return int(stem) if stem.isdigit() and len(stem) >= 6 and ext in ("", "tar", "parquet") else None


def shard_id_from_marker_name(name: str) -> int | None:
    """``000123.json`` (in _done/ or _failed/) -> 123; anything else (temp files, strays, ``1.json``) -> None.

    A marker's name is shard_name's six digits or more, as owned_kind says: so every marker name starts
    with three digits, which lets a listing of _done/ split by name prefix (jobs/prepare/resume.py) find them all.
    """
    stem, _, ext = name.rsplit("/", 1)[-1].partition(".")
    return int(stem) if ext == "json" and _is_shard_name(stem) else None
