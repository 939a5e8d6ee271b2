"""``turbobatch verify OUT [--json] [--repair]``: is every committed shard what its marker says?

For every shard with a done marker: each object the marker lists exists with the bytes and
sha256 it records, the metadata has the shard's rows, and the image count (tar members, data
Parquet rows, image files checked against the metadata's sha256) matches the marker. One listing
of each data folder finds orphans: data objects no marker claims (what dead runs, a copy or a
sync left). Reads only the output folder, through output/storage.Folder (local, s3://, ...).

On S3, where readers take a complete block from its summary instead of listing it (jobs/prepare/resume.py
done_listing), a shard a summary names but that has no done marker (removed by hand) is broken too: every
reader would count it as committed and no run would redo it.

``--repair`` removes the done marker of each broken shard, then its objects, and the orphans:
never an object of a good committed shard. The same render command then redoes exactly the
repaired shards. Run it when no job writes to the folder: a shard being written has no marker
yet, so its objects count as orphans.

Exit codes: 0 all good, 1 something was wrong (also after --repair: rerun the render command),
2 the folder is not a turbobatch output or cannot be read.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
from dataclasses import asdict, dataclass, field
from typing import IO, Any

import pyarrow.parquet as pq

from turbobatch.errors import EXIT_BROKEN, EXIT_NOT_AN_OUTPUT, EXIT_OK, JobError
from turbobatch.jobs.console import json_object
from turbobatch.jobs.prepare import resume
from turbobatch.output import layout, summary
from turbobatch.output.storage import Folder, describe_error

_CHUNK = 1 << 20
_FLAT_DIRS = tuple(d for d in layout.DATA_DIRS if d != "images")


@dataclass
class ShardCheck:
    shard: int
    problems: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)  # what --repair removes after the marker (files, folders)


@dataclass
class Report:
    output: str
    format: str
    planned: int
    committed: int
    broken: list[ShardCheck]
    orphans: list[str]
    repaired: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.broken and not self.orphans

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        for b in d["broken"]:
            b.pop("objects")
        return d


class _HashingReader:
    """Reads through a file, hashing and counting every byte that passes."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.sha256, self.size = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def finish(self) -> str:
        while self.read(_CHUNK):
            pass
        return self.sha256.hexdigest()


def verify(out: Folder) -> Report:
    """Check every committed shard and look for orphans; changes nothing."""
    if not out.exists(layout.PLAN) or not out.exists(layout.SPEC):
        raise JobError(f"output: {out.display()} has no {layout.PLAN}; it is not a turbobatch output")
    fmt = out.read_json(layout.SPEC)["spec"]["format"]
    planned = {s["shard_id"] for s in out.read_json(layout.PLAN)["shards"]}
    done = sorted(resume.done_listing(out, len(planned), trust_summaries=False).versions)  # every marker, listed
    markers = _read_markers(out, done)
    listing = {d: out.list_sizes(d) for d in layout.DATA_DIRS}
    checker = _ShardChecker(out, fmt, listing)
    checks = [checker.check(sid, markers[sid], sid in planned) for sid in done]
    checks += [ShardCheck(sid, [UNMARKED]) for sid in summarized_without_marker(out, len(planned), set(done))]
    claimed = {rel for m in markers.values() if isinstance(m, dict) for rel in m.get("files", {})}
    claimed |= {layout.image_dir(sid) for sid, m in markers.items() if fmt == "files" and isinstance(m, dict)}
    orphans = [f"{d}/{name}" for d, names in listing.items() for name in names if f"{d}/{name}" not in claimed]
    orphans += checker.stray_images
    return Report(
        out.display(),
        fmt,
        len(planned),
        len(done),
        sorted((c for c in checks if c.problems), key=lambda c: c.shard),
        sorted(orphans),
    )


UNMARKED = (
    "a summary (_job/summary/) names it, but it has no done marker (removed by hand?): readers count it as "
    "committed; --repair makes the next run redo it"
)


def summarized_without_marker(out: Folder, planned: int, done: set[int]) -> list[int]:
    """Planned shards a summary names that have no done marker, where summaries stand in for listings (S3),
    less those `verify --repair` already named in spec.json (their blocks are listed: resume.done_listing)."""
    if not out.lists_by_prefix or not planned:
        return []
    known = done | (resume.removed_markers(out) or set())
    stored = summary.read_blocks(out, list(range(-(-planned // layout.SUMMARY_BLOCK))))
    return sorted(i for entries in stored.values() for i in entries if i < planned and i not in known)


def _read_markers(out: Folder, ids: list[int]) -> dict[int, dict[str, Any] | str]:
    """Shard id -> its marker, or why it cannot be read; one batched read."""
    paths = {sid: out.path(layout.done_path(sid)) for sid in ids}
    contents = out.fs.cat(list(paths.values()), on_error="return", **out.small_file_options()) if ids else {}
    markers: dict[int, dict[str, Any] | str] = {}
    for sid, path in paths.items():
        data = contents.get(path)
        try:
            if isinstance(data, BaseException):
                raise data
            markers[sid] = json.loads(data)
        except Exception as e:  # noqa: BLE001 - a marker that cannot be read is a broken shard
            markers[sid] = f"{type(e).__name__}: {e}"
    return markers


class _ShardChecker:
    """Checks one committed shard's objects against its marker, from the folder listings."""

    def __init__(self, out: Folder, fmt: str, listing: dict[str, dict[str, int | None]]) -> None:
        self.out, self.fmt, self.listing = out, fmt, listing
        self.stray_images: list[str] = []  # files in a committed shard's image folder that metadata does not name

    def check(self, sid: int, marker: dict[str, Any] | str, in_plan: bool) -> ShardCheck:
        result = ShardCheck(sid)
        if not isinstance(marker, dict) or not {"files", "rows", "ok"} <= marker.keys():
            reason = marker if isinstance(marker, str) else "not a done marker: no files, rows or ok"
            result.problems.append(f"{layout.done_path(sid)}: unreadable ({reason})")
            return result
        result.objects = [rel for rel in marker["files"] if self._size(rel) is not None]
        if not in_plan:
            result.problems.append("has a done marker but is not in the plan (_job/plan.json)")
        expected = {
            layout.metadata_path(sid),
            *({"tar": [layout.tar_path(sid)], "parquet": [layout.data_path(sid)]}.get(self.fmt, [])),
        }
        result.problems += [f"{rel}: not listed in the done marker" for rel in sorted(expected - set(marker["files"]))]
        for rel, recorded in sorted(marker["files"].items()):
            result.problems += self._check_object(rel, recorded, marker)
        if self.fmt == "files":
            result.objects.append(layout.image_dir(sid))
            result.problems += self._check_image_files(sid, marker)
        return result

    def _size(self, rel: str) -> int | None:
        folder, _, name = rel.rpartition("/")
        return self.listing.get(folder, {}).get(name)

    def _check_object(self, rel: str, recorded: dict[str, Any], marker: dict[str, Any]) -> list[str]:
        size = self._size(rel)
        if size is None:
            return [f"{rel}: missing"]
        if size != recorded["bytes"]:
            return [f"{rel}: {size} bytes, the done marker says {recorded['bytes']} (truncated or replaced)"]
        try:
            digest, problems = self._read_and_count(rel, marker)
        except Exception as e:  # noqa: BLE001 - content that does not parse: say so, unless the bytes changed
            digest, problems = self._digest(rel), [f"{rel}: cannot be read ({type(e).__name__}: {e})"]
        if digest != recorded["sha256"]:
            return [
                f"{rel}: sha256 {digest[:16]}... differs from the done marker's {recorded['sha256'][:16]}... "
                "(changed or corrupted)"
            ]
        return problems

    def _digest(self, rel: str) -> str:
        with self.out.open(rel) as f:
            return _HashingReader(f).finish()

    def _read_and_count(self, rel: str, marker: dict[str, Any]) -> tuple[str, list[str]]:
        """The object's sha256 (one streamed read) and what its content says against the marker."""
        with self.out.open(rel) as f:
            reader = _HashingReader(f)
            if rel.startswith("shards/"):
                images, jsons = _tar_counts(reader)
                found, recorded = (
                    {"images": images, "json members": jsons},
                    {"images": marker["ok"], "json members": marker["ok"]},
                )
            elif rel.startswith("metadata/"):  # small: read whole
                status = pq.read_table(io.BytesIO(reader.read()), columns=["status"]).column("status").to_pylist()
                found, recorded = (
                    {"rows": len(status), "ok rows": status.count("ok")},
                    {"rows": marker["rows"], "ok rows": marker["ok"]},
                )
            else:  # data/SSSSSS.parquet: one row per ok image; hashed as a stream, then its footer read
                reader.finish()
                with self.out.open(rel) as again:
                    found, recorded = {"rows": pq.ParquetFile(again).metadata.num_rows}, {"rows": marker["ok"]}
            return reader.finish(), _compare(rel, found, recorded)

    def _check_image_files(self, sid: int, marker: dict[str, Any]) -> list[str]:
        """--format files: each ok row's image file against the sha256 and bytes its metadata row
        records (the marker vouches for the metadata)."""
        meta_rel = layout.metadata_path(sid)
        if self._size(meta_rel) is None:
            return []  # reported as missing already
        rows = pq.read_table(io.BytesIO(self.out.read_bytes(meta_rel)), columns=["status", "image", "sha256", "bytes"])
        wanted = {r["image"]: r for r in rows.to_pylist() if r["status"] == "ok"}
        folder = layout.image_dir(sid)
        sizes = self.out.list_sizes(folder)
        self.stray_images += sorted(f"{folder}/{name}" for name in sizes if f"{folder}/{name}" not in wanted)
        problems = []
        for rel, row in sorted(wanted.items()):
            recorded = {"bytes": row["bytes"], "sha256": row["sha256"]}
            size = sizes.get(rel.rsplit("/", 1)[-1])
            if size is None:
                problems.append(f"{rel}: missing")
            elif size != row["bytes"]:
                problems.append(f"{rel}: {size} bytes, its metadata row says {row['bytes']} (truncated or replaced)")
            elif hashlib.sha256(self.out.read_bytes(rel)).hexdigest() != recorded["sha256"]:
                problems.append(f"{rel}: sha256 differs from its metadata row's (changed or corrupted)")
        present = sum(rel.rsplit("/", 1)[-1] in sizes for rel in wanted)
        return problems + _compare(folder, {"images": present}, {"images": marker["ok"]})


def _tar_counts(reader: _HashingReader) -> tuple[int, int]:
    """(image members, json members) of a tar read as a stream."""
    images = jsons = 0
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        for member in tar:
            is_json = member.name.endswith(".json")
            jsons += is_json
            images += not is_json
    return images, jsons


def _compare(rel: str, found: dict[str, int], recorded: dict[str, int]) -> list[str]:
    return [f"{rel}: {found[k]} {k}, the done marker says {recorded[k]}" for k in found if found[k] != recorded[k]]


def repair(out: Folder, report: Report) -> dict[str, Any]:
    """Remove each broken shard's done marker (first: from then on it does not exist for
    readers), then its objects, then the orphans. Good committed shards are never touched. The shards are
    named in spec.json before their markers go, so no reader takes them from a summary again
    (resume.record_removed_markers)."""
    removed: list[str] = []
    resume.record_removed_markers(out, [check.shard for check in report.broken])
    for check in report.broken:
        out.remove_file(layout.done_path(check.shard))
        removed += _remove(out, check.objects)
    removed += _remove(out, report.orphans)
    report.repaired = {"markers_removed": [c.shard for c in report.broken], "objects_removed": removed}
    return report.repaired


def _remove(out: Folder, rels: list[str]) -> list[str]:
    for rel in rels:
        if rel.startswith("images/") and rel.count("/") == 1:  # a shard's image folder
            out.remove_tree(rel)
        else:
            out.remove_file(rel)
    return list(rels)


def format_report(report: Report) -> str:
    lines = [
        f"output:  {report.output} (format {report.format})",
        f"shards:  {report.committed} committed of {report.planned} planned; {len(report.broken)} broken; "
        f"{len(report.orphans)} orphan object(s)",
    ]
    for check in report.broken:
        lines += [f"shard {check.shard}: {problem}" for problem in check.problems]
    lines += [f"orphan: {rel} (no done marker claims it)" for rel in report.orphans[:50]]
    if len(report.orphans) > 50:
        lines.append(f"... and {len(report.orphans) - 50} more orphans")
    if report.repaired is not None:
        ids = report.repaired["markers_removed"]
        lines.append(
            f"repaired: removed {len(ids)} done marker(s) {ids}, {len(report.repaired['objects_removed'])} "
            "object(s); run the same render command again to redo those shards"
        )
    elif not report.ok:
        lines.append("run `turbobatch verify --repair` (no job writing), then the same render command again")
    lines.append("ok" if report.ok else "NOT OK")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "turbobatch verify") -> int:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Check an output folder's committed shards against their "
        "done markers, and find orphan objects; exit 1 if anything is wrong.",
    )
    p.add_argument("output", help="the job's output folder URL")
    p.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    p.add_argument(
        "--repair",
        action="store_true",
        help="remove the done markers (and objects) of broken "
        "shards and the orphans, so the same render command redoes exactly those shards; good shards "
        "are never touched. Only while no job writes to the folder",
    )
    p.add_argument(
        "--storage-options",
        type=json_object("--storage-options"),
        default={},
        help="fsspec options for the output, as JSON (as for the render job)",
    )
    args = p.parse_args(argv)
    try:
        out = Folder(args.output, args.storage_options)
        report = verify(out)
        if args.repair and not report.ok:
            repair(out, report)
    except JobError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NOT_AN_OUTPUT
    except Exception as e:  # noqa: BLE001 - storage failures: say what and where
        print(
            f"error: output: cannot read {args.output}: {describe_error(e, args.output, args.storage_options)}",
            file=sys.stderr,
        )
        return EXIT_NOT_AN_OUTPUT
    print(json.dumps(report.to_dict(), indent=1) if args.json else format_report(report))
    return EXIT_OK if report.ok else EXIT_BROKEN
