"""Summaries of done markers: what resume, ``status``, ``status --watch`` and the card read instead of every marker.

A done marker stays the only truth about its shard; a summary only spares reading it again. For each block
of 1,000 shard ids, ``_job/summary/BBBBBB.json.gz`` holds what those readers use of each committed shard's
marker (``summarize``: the marker less its files' checksums, spec hash and pid) beside the marker's version
as the listing of ``_done/`` named it when the marker was read (storage.version_of: size and ETag on S3,
size, mtime and inode on a local disk). The driver writes a block's summary when the block's last shard
commits (jobs/run/block_summaries.py); a reader lists ``_done/`` (it did anyway), takes from the summaries
each marker whose version is unchanged, reads only the others (new ones, and those a redone shard or
``verify --repair`` rewrote or removed) and rewrites the summaries of the blocks that changed.

Why: reading every marker is one GET each. ``status`` of 100,000 committed shards on moto took ~16 min
(about 105 GETs/s through the counting proxy, measured), where the goal is under a minute.

Safe by construction: the listing comes before the read, so an entry is never older than the version it
names (a marker rewritten in between is recorded under its older version and read again next time).
Each summary is written whole (one PUT, or a rename), so concurrent readers that rewrite the same one
leave one consistent summary. A reader that cannot write (a read-only output) reads what the summaries
miss every time, and a summary that cannot be read counts as absent.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from typing import Any

from turbobatch.output import layout
from turbobatch.output.storage import Folder

FORMAT = 1
_DROPPED = ("spec_hash", "pid")  # no reader of summaries uses them; a marker's files keep only their bytes
Entry = tuple[str | None, dict[str, Any]]  # (the marker's version, its summary)


def summarize(marker: dict[str, Any]) -> dict[str, Any]:
    """What status, the watch and the card read of a done marker: all of it but the files' checksums
    (verify reads the markers themselves), the spec hash and the pid. ~0.55 KB of a 1.1 KB marker."""
    kept = {k: v for k, v in marker.items() if k not in _DROPPED}
    if isinstance(marker.get("files"), dict):
        kept["files"] = {rel: {"bytes": f.get("bytes")} for rel, f in marker["files"].items()}
    return kept


def done_markers(
    out: Folder,
    versions: dict[int, str | None],
    write: bool = True,
    min_per_block: int = 1,
    stored: dict[int, dict[int, Entry]] | None = None,
    fresh: dict[int, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The summaries of the done markers of ``versions`` (shard id -> version, resume.done_versions), in
    shard id order: from the summaries where they name the same version, else read from the markers
    (always, where the store's listing gives no version: storage.version_of).

    ``write``: rewrite the summaries of the blocks that changed (failures ignored: a read-only output).
    ``min_per_block``: read a block's summary only when that many of its markers are wanted (a watch's
    refresh wants a few new ones, which no summary holds yet).
    ``stored``: summaries the caller has read already (read_blocks, as resume.done_listing returns them).
    ``fresh``: shard id -> the summary of its marker as the caller holds it (the driver: markers the
    actors returned, jobs/run/block_summaries.py), taken for the version listed; not read again.
    """
    blocks = _by_block(versions)
    known = stored or {}
    wanted = [b for b, ids in blocks.items() if len(ids) >= min_per_block]
    stored = {**read_blocks(out, [b for b in wanted if b not in known]), **{b: known[b] for b in wanted if b in known}}
    entries: dict[int, Entry] = {}
    for block, ids in blocks.items():
        held = stored.get(block, {})
        entries.update((i, held[i]) for i in ids if i in held and versions[i] is not None and held[i][0] == versions[i])
    entries.update((i, (versions[i], marker)) for i, marker in (fresh or {}).items() if i in versions)
    missing = sorted(versions.keys() - entries.keys())
    for shard_id, marker in zip(missing, out.read_json_many([layout.done_path(i) for i in missing])):
        entries[shard_id] = (versions[shard_id], summarize(marker))
    if write:
        _write_changed(out, {b: ids for b, ids in blocks.items() if b in stored}, stored, entries)
    return [entries[i][1] for i in sorted(versions)]


def _by_block(ids: dict[int, str]) -> dict[int, list[int]]:
    blocks: dict[int, list[int]] = defaultdict(list)
    for shard_id in sorted(ids):
        blocks[shard_id // layout.SUMMARY_BLOCK].append(shard_id)
    return blocks


def read_blocks(out: Folder, blocks: list[int]) -> dict[int, dict[int, Entry]]:
    """Block -> its summary's entries ({} for a summary absent or unreadable); one batched read."""
    found = out.read_bytes_many([layout.summary_path(b) for b in blocks])
    return {b: _parse(found[layout.summary_path(b)]) for b in blocks}


def covers(entries: dict[int, Entry], ids: range) -> bool:
    """Whether a block's summary names a marker version for every shard id of ``ids`` (all planned ids of the
    block): then no marker of the block can appear that the summary lacks (resume.done_listing)."""
    return all(i in entries and entries[i][0] is not None for i in ids)


def _parse(data: bytes | None) -> dict[int, Entry]:
    if data is None:
        return {}
    try:
        summary = json.loads(gzip.decompress(data))
        if summary.get("format") != FORMAT:
            return {}
        return {int(i): (version, marker) for i, (version, marker) in summary["shards"].items()}
    except Exception:  # noqa: BLE001 - torn, foreign or of another format: no summary, the markers are read
        return {}


def _write_changed(
    out: Folder, blocks: dict[int, list[int]], stored: dict[int, dict[int, Entry]], entries: dict[int, Entry]
) -> None:
    """Rewrite each summary whose markers or versions differ from what it holds."""
    changed = {}
    for block, ids in blocks.items():
        versions = {i: entries[i][0] for i in ids}
        if versions != {i: entry[0] for i, entry in stored[block].items()}:
            summary = {"format": FORMAT, "shards": {str(i): list(entries[i]) for i in ids}}
            changed[layout.summary_path(block)] = gzip.compress(json.dumps(summary, separators=(",", ":")).encode())
    try:
        out.write_many(changed)
    except Exception:  # noqa: BLE001 - a cache: a read-only output (or any failure to write) still gets its answer
        pass
