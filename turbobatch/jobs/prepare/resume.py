"""Resume state: which shards are committed or failed, and whether the output is this job's.

One listing of ``OUT/_done/`` tells which shards are done. ``_job/spec.json`` holds the
fingerprint of the first run; a rerun whose fingerprint differs stops, naming what changed,
unless the user asks for ``--overwrite``. A shard that failed for good gets
``_failed/SSSSSS.json`` (never a done marker), so status can show it; it stays pending, and
the next run retries it and removes the marker once the shard commits.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from turbobatch.errors import JobError
from turbobatch.jobs.prepare.plan import describe_changes
from turbobatch.output import layout, summary
from turbobatch.output.shard import Shard
from turbobatch.output.storage import TEMP_MARK, Folder, check_endpoint, describe_error
from turbobatch.spec.expand import images_per_row
from turbobatch.spec.job import JobSpec


def check_writable(out: Folder) -> None:
    """Fail early (before Ray or any model) when the output cannot be written: write a probe and
    remove it, and on a local disk the folders the probe created, so that a job failing any later
    check leaves the output as it found it (a folder that did not exist is not created)."""
    created = _missing_folders(out, layout.WRITE_PROBE)
    try:
        check_endpoint(out.url, out.storage_options)
        out.write_bytes(layout.WRITE_PROBE, b"ok")
        out.fs.rm(out.path(layout.WRITE_PROBE))
    except Exception as e:  # noqa: BLE001 - any failure here means "cannot write"
        reason = describe_error(e, out.display(), out.storage_options)
        raise JobError(f"output: cannot write to {out.display()}: {reason}") from None
    finally:
        _remove_empty(created)


def _missing_folders(out: Folder, rel: str) -> list[str]:
    """The local folders that writing ``rel`` would create, deepest first (none on an object store)."""
    if not out.is_local:
        return []
    missing = []
    path = os.path.dirname(out.path(rel))
    while not os.path.exists(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _remove_empty(folders: list[str]) -> None:
    """Remove each local folder that is empty (give a folder before its parent): one that holds anything stays."""
    for path in folders:
        with contextlib.suppress(OSError):  # not empty (a file that is not ours, another writer's), or absent
            os.rmdir(path)


def check_writable_read_only(out: Folder) -> str:
    """check_writable without writing anything (the dry run): a local folder, or the nearest folder
    above it that exists, must be a writable folder; an object store's folder must be listable (its
    bucket there, the credentials accepted). Returns what was checked; JobError when it fails."""
    try:
        check_endpoint(out.url, out.storage_options)
        if out.is_local:
            path = out.root
            while not os.path.exists(path) and os.path.dirname(path) != path:
                path = os.path.dirname(path)
            if not os.path.isdir(path):
                raise NotADirectoryError(f"{path} is not a folder")
            if not os.access(path, os.W_OK | os.X_OK):
                raise PermissionError(f"{path} is not writable by this user")
            state = "exists" if path == out.root else f"absent (the run creates it in {path})"
            return f"{state}; writable"
        names = out.list_names("")
    except Exception as e:  # noqa: BLE001 - any failure here means "cannot write"
        reason = describe_error(e, out.display(), out.storage_options)
        raise JobError(f"output: cannot write to {out.display()}: {reason}") from None
    state = f"{len(names)} entries" if names else "empty or absent"
    return f"{state}; readable (write access is not tested without writing: the run's first step tests it)"


def committed_shards(out: Folder, planned: int | None = None) -> set[int]:
    """Shard ids with a done marker: one listing of _done/ (split by name prefix when ``planned`` is large),
    less the blocks of 1,000 ids whose summary vouches for every planned shard (done_listing)."""
    return set(done_versions(out, planned))


def done_versions(out: Folder, planned: int | None = None) -> dict[int, str | None]:
    """Shard id -> version of its done marker (storage.version_of: changes when the marker is rewritten)."""
    return done_listing(out, planned).versions


@dataclass(frozen=True)
class DoneListing:
    versions: dict[int, str | None]  # shard id -> version of its done marker
    summaries: dict[int, dict[int, summary.Entry]]  # the summaries read on the way (block -> entries)
    listed: frozenset[int]  # the planned blocks whose markers were listed (all where _done/ is listed whole)


# Where summaries may stand in for a listing: a block of SUMMARY_BLOCK ids is one 3-digit name prefix up to here.
TRUSTED_UP_TO = 1000 * layout.SUMMARY_BLOCK
REMOVED_MARKERS = "removed_markers"  # spec.json: shard ids whose done marker `verify --repair` removed


def done_listing(
    out: Folder, planned: int | None = None, trust_summaries: bool = True, skip: Collection[int] = ()
) -> DoneListing:
    """Which shards of a plan of ``planned`` shards (ids 0 to planned - 1) have a done marker, and its version.

    With the plan's shard count, a large _done/ on S3 is listed by name prefix, 1,000 shard ids a
    listing, concurrently (listing_prefixes); every marker is found, in the plan or not. There, a block of
    1,000 ids is not listed when its summary (output/summary.py) names every planned shard of the block:
    a summary entry is written only for a marker its writer listed, and no marker of a complete block is
    added, only rewritten (a redone shard: its entry keeps the older version, the shard stays committed)
    or removed, which only `verify --repair` (recorded in spec.json first: record_removed_markers, and the
    block is listed from then on) and --overwrite (spec.json and the summaries go first: _clear) do. On
    moto every LIST request scans the whole bucket (tars and metadata too), so the 101 listings of 100,000
    markers took 34-45 s where reading 100 summaries takes a few. Without spec.json (not this job's
    output yet, or an --overwrite cut short) every block is listed.

    ``skip``: blocks the caller knows are complete (a watch that listed them before); where listings go by
    prefix they are neither listed nor read, and their markers are absent from ``versions`` (see ``listed``).
    """
    prefixes, after = listing_prefixes(planned)
    if not prefixes or not out.lists_by_prefix or planned is None or planned > TRUSTED_UP_TO:
        every = frozenset(range(-(-(planned or 0) // layout.SUMMARY_BLOCK)))
        return DoneListing(_marker_versions(out, layout.DONE_DIR, planned), {}, every)
    blocks = [b for b in range(len(prefixes)) if b not in skip]
    versions: dict[int, str | None] = {}
    stored: dict[int, dict[int, summary.Entry]] = {}
    trusted = set(skip)
    removed = removed_markers(out) if trust_summaries else None
    if removed is not None:
        stored = summary.read_blocks(out, blocks)
        untrusted = {i // layout.SUMMARY_BLOCK for i in removed}
        for b in blocks:
            ids = range(b * layout.SUMMARY_BLOCK, min(planned, (b + 1) * layout.SUMMARY_BLOCK))
            if b not in untrusted and summary.covers(stored[b], ids):
                trusted.add(b)
                versions.update((i, entry[0]) for i, entry in stored[b].items())
    listed = out.list_versions(layout.DONE_DIR, [p for b, p in enumerate(prefixes) if b not in trusted], after)
    ids = {name: layout.shard_id_from_marker_name(name) for name in listed}
    versions.update((i, listed[name]) for name, i in ids.items() if i is not None)
    return DoneListing(versions, stored, frozenset(b for b in range(len(prefixes)) if b not in trusted))


def removed_markers(out: Folder) -> set[int] | None:
    """The shard ids whose done markers `verify --repair` removed (spec.json); None without a readable spec.json."""
    data = out.read_bytes_many([layout.SPEC])[layout.SPEC]  # one GET, absent or not (read_json: HEAD + LIST)
    try:
        job = json.loads(data) if data is not None else None
    except ValueError:  # torn or foreign: no summary is trusted
        return None
    removed = job.get(REMOVED_MARKERS, []) if isinstance(job, dict) else None
    return {int(i) for i in removed} if isinstance(removed, list) else None


def record_removed_markers(out: Folder, shard_ids: Collection[int]) -> None:
    """Before `verify --repair` removes done markers: name them in spec.json, so that from then on no reader
    takes their blocks from a summary (a status running meanwhile may rewrite one that still names them)."""
    if not shard_ids:
        return
    job = out.read_json(layout.SPEC)
    job[REMOVED_MARKERS] = sorted(set(job.get(REMOVED_MARKERS, [])) | set(shard_ids))
    out.write_json(layout.SPEC, job)


def failed_shards(out: Folder) -> set[int]:
    """Shard ids with a failed marker: one listing of _failed/ (may include since-committed ones)."""
    return set(_marker_versions(out, layout.FAILED_DIR, None))


def _marker_versions(out: Folder, folder: str, planned: int | None) -> dict[int, str | None]:
    prefixes, after = listing_prefixes(planned)
    listed = out.list_versions(folder, prefixes, after)
    ids = {name: layout.shard_id_from_marker_name(name) for name in listed}
    return {i: listed[name] for name, i in ids.items() if i is not None}


IDS_PER_PREFIX = 1000  # a marker name has six digits or more: its first three hold 1,000 ids (the last three vary)
# Prefix listings pay from 3 prefixes on: up to 2,000 shards one listing is 1 or 2 pages.
PREFIX_LISTING_FROM = 2 * IDS_PER_PREFIX + 1


def listing_prefixes(planned: int | None) -> tuple[list[str], str | None]:
    """Name prefixes that list every marker of a plan of ``planned`` shards, and the name after which
    the rest (ids past the plan) come; ([], None) for one listing.

    A marker's name starts with three digits (layout.shard_id_from_marker_name), so "000", "001", ...,
    up to the plan's last, then every name after "K:" (":" sorts after the digits), hold all of them:
    on S3 up to 16 listings run at once, each of 1,000 ids (on moto each also sorts only its own names).
    """
    if planned is None or planned < PREFIX_LISTING_FROM:
        return [], None
    count = min(1000, (planned - 1) // IDS_PER_PREFIX + 1)  # ids of 7 digits share the 3-digit prefixes
    prefixes = [f"{i:03d}" for i in range(count)]
    return prefixes, f"{prefixes[-1]}:"


def record_failure(out: Folder, shard: Shard, error: str, detail: str, attempts: int, retryable: bool) -> None:
    """Write ``_failed/SSSSSS.json``: why the shard failed (one line, and the full remote
    traceback as ``detail``); the next run retries it."""
    out.write_json(
        layout.failed_path(shard.shard_id),
        {
            "shard": shard.shard_id,
            "rows": shard.num_images,
            "error": error,
            "detail": detail[-20_000:],
            "attempts": attempts,
            "infrastructure": retryable,
            "failed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )


def clear_failure(out: Folder, shard_id: int) -> None:
    """Remove a failed marker once its shard has committed."""
    out.remove_file(layout.failed_path(shard_id))


def tidy(out: Folder, done: set[int]) -> set[int]:
    """Before rendering: drop what dead runs left; returns the ids of failed, uncommitted shards.

    A failed marker whose shard has since committed (a run killed between the two writes) is
    removed; temp files of killed writers are deleted.
    """
    failed = failed_shards(out)
    for shard_id in failed & done:
        clear_failure(out, shard_id)
    remove_temp_leftovers(out)
    return failed - done


def remove_temp_leftovers(out: Folder) -> int:
    """Delete what killed writers left; returns how many.

    Temp files (``*.tmp-*``: local disks only, object stores get whole PUTs) and incomplete
    multipart uploads (object stores: a tar killed mid-upload). Neither can be mistaken for
    data (no reader, resume or status sees them), but they take space. Local: one listing per
    flat output folder (per-shard image folders are cleaned by the worker that redoes the
    shard); S3: one listing of the uploads. Run before any actor starts and after all have
    finished, so no live writer is cut off.
    """
    removed = 0
    for folder in ("", *layout.TEMP_LEFTOVER_DIRS) if out.is_local else ():
        for name in out.list_names(folder):
            if TEMP_MARK in name and (folder or name.startswith(layout.CARD)):  # in OUT itself: only the card's
                out.remove_file(f"{folder}/{name}" if folder else name)
                removed += 1
    try:
        removed += out.abort_incomplete_uploads(layout.OUTPUT_DIRS)
    except OSError as e:  # not granted (s3:ListBucketMultipartUploads), not implemented by the store, ...
        # Housekeeping only: it must not fail a job whose shards are all committed.
        print(
            f"turbobatch: warning: cannot clear incomplete uploads under {out.display()} "
            f"({type(e).__name__}: {e}); a bucket lifecycle rule (AbortIncompleteMultipartUpload) "
            "can do it instead",
            file=sys.stderr,
        )
    return removed


@dataclass(frozen=True)
class Claim:
    """What claiming the output for a job does (``inspect``), before anything is written."""

    done: set[int]  # committed shards the job keeps
    discard: bool  # --overwrite discards an output of another job (or of no known job)
    new: bool  # the plan and spec are written (a first run, or one that discards)


def inspect(out: Folder, spec: JobSpec, plan: list[Shard], fingerprint: dict[str, Any]) -> Claim:
    """Read-only: whether the output may be claimed for this job (else JobError, naming what
    differs) and which shards it keeps. ``prepare`` acts on it; the dry run only reports it."""
    previous = out.read_json(layout.SPEC)["fingerprint"] if out.exists(layout.SPEC) else None
    changes = describe_changes(previous, fingerprint) if previous is not None else []
    if changes and not spec.overwrite:
        raise JobError(
            f"output: {out.display()} holds a job made with other inputs or options:\n  "
            + "\n  ".join(changes)
            + "\nUse a new output folder, or --overwrite to discard the existing output."
        )
    found = committed_shards(out, len(plan))
    foreign = previous is None and bool(found)  # done markers of an unknown job
    if foreign and not spec.overwrite:
        raise JobError(
            f"output: {out.display()} has committed shards but no {layout.SPEC}; it was not "
            "made by this job. Use a new output folder, or --overwrite to discard it."
        )
    discard = bool(changes or foreign)  # only with --overwrite, as checked above
    done = set() if discard else found
    unknown = sorted(done - {s.shard_id for s in plan})
    if unknown:
        raise JobError(f"output: done markers for shards not in the plan: {unknown[:10]}")
    return Claim(done, discard, previous is None or discard)


def prepare(out: Folder, spec: JobSpec, plan: list[Shard], fingerprint: dict[str, Any]) -> set[int]:
    """Claim the output for this job (or check it is ours) and return the committed shard ids."""
    claim = inspect(out, spec, plan, fingerprint)
    if claim.discard:
        _clear(out)
    if claim.new:  # claim the output for this job
        planned_at = datetime.now(UTC).isoformat(timespec="seconds")
        out.write_json(
            layout.PLAN,
            {
                "num_shards": len(plan),
                "planned_at": planned_at,
                "input_rows": sum(f["num_rows"] for f in fingerprint["inputs"]),
                "images_per_row": images_per_row(spec),
                "num_images": sum(s.num_images for s in plan),
                "shards": [s.to_dict() for s in plan],
            },
        )
        out.write_json(layout.SPEC, {"spec": spec.to_public_dict(), "fingerprint": fingerprint})
    return claim.done


# The order --overwrite names what it removed in.
_KINDS = ("done marker", "failed marker", "metadata file", "tar shard", "data file", "image file", "temp file", "_job/")


def _clear(out: Folder) -> None:
    """--overwrite: remove only the files the layout names (layout.owned_kind), never another file in
    the folder (a user's notes in metadata/, a folder another tool keeps there), and say what went."""
    removed: Counter[str] = Counter()
    ours: list[str] = []
    kept: list[str] = []
    for folder in layout.OUTPUT_DIRS:
        for name in out.list_files(folder):
            rel = f"{folder}/{name}"
            if kind := layout.owned_kind(rel):
                ours.append(rel)
                removed[kind] += 1
            else:
                kept.append(rel)
    # spec.json and the summaries first: a removal cut short must leave no summary that vouches for a removed
    # marker (without spec.json no reader trusts a summary: done_listing).
    first = {rel for rel in ours if rel == layout.SPEC or rel.startswith(f"{layout.SUMMARY_DIR}/")}
    out.remove_files(sorted(first))
    out.remove_files([rel for rel in ours if rel not in first])
    if out.is_local:
        _remove_empty([out.path(rel) for rel in {r.rsplit("/", 1)[0] for r in ours if r.startswith("images/")}])
        _remove_empty([out.path(rel) for rel in layout.OUTPUT_DIRS])
    print(
        f"turbobatch: --overwrite: removed {_describe_removed(removed)} from {out.display()}{_kept_note(kept)}",
        file=sys.stderr,
    )


def _describe_removed(removed: Counter[str]) -> str:
    """Counts per kind, in _KINDS order ("5 done markers, 5 metadata files, _job/"), or "nothing"."""
    parts = [
        kind if kind == "_job/" else f"{removed[kind]} {kind}{'s' if removed[kind] != 1 else ''}"
        for kind in _KINDS
        if removed[kind]
    ]
    return ", ".join(parts) or "nothing"


def _kept_note(kept: list[str]) -> str:
    """The files in turbobatch's folders that it did not write: named, so the user sees they were kept."""
    if not kept:
        return ""
    names = ", ".join(kept[:5]) + (", ..." if len(kept) > 5 else "")
    return f"; kept {len(kept)} file(s) that turbobatch does not write: {names}"
