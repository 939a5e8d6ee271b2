"""``turbobatch status OUTPUT [--json] [--watch [SECONDS]]``: where a job stands, from its output alone.

Reads ``_job/`` (plan, spec), one listing each of ``_done/`` and ``_failed/``, and the done
markers (counts, timings: where the devices' time went, and which node rendered each shard): through
their summaries (output/summary.py), so only markers new or rewritten since the last reader are read.
On S3 a block of 1,000 shards whose summary names every planned shard is not listed at all
(resume.done_listing: 100,000 shards with their tars and metadata, on moto, 63 s -> 8 s).
Needs no Ray, no model and no input: it works while a job runs, after it died, or from another machine
(read-only too). ``--watch`` follows a running job (jobs/inspect/watch.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from turbobatch.errors import JobError
from turbobatch.jobs.console import json_object
from turbobatch.jobs.inspect.startup import startup_line, startup_report
from turbobatch.jobs.inspect.watch import DEFAULT_INTERVAL_S, watch_output
from turbobatch.jobs.prepare import resume
from turbobatch.output import layout, summary
from turbobatch.output.shard import planned_images
from turbobatch.output.storage import Folder, describe_error


def job_status(out: Folder) -> dict[str, Any]:
    """The job's state as a plain dict (what ``--json`` prints)."""
    if not out.exists(layout.PLAN) or not out.exists(layout.SPEC):
        raise JobError(f"output: {out.display()} has no {layout.PLAN}; it is not a turbobatch output (yet)")
    plan = out.read_json(layout.PLAN)
    job = out.read_json(layout.SPEC)
    spec = job["spec"]
    images_of = planned_images(plan)  # metadata rows: one per image
    listing = resume.done_listing(out, len(images_of))  # complete blocks from their summaries (S3)
    versions = listing.versions
    done = versions.keys() & images_of.keys()
    failed = (resume.failed_shards(out) & images_of.keys()) - done
    markers = summary.done_markers(out, {i: versions[i] for i in done}, stored=listing.summaries)
    failures = out.read_json_many([layout.failed_path(i) for i in sorted(failed)])
    pending = images_of.keys() - done - failed
    return {
        "output": out.display(),
        "model": spec.get("model"),
        "planned_at": plan.get("planned_at"),
        "input_rows": sum(f["num_rows"] for f in job["fingerprint"]["inputs"]),
        "images_per_row": plan.get("images_per_row", 1),  # images per prompt x sweep combinations
        "shards": {"total": len(images_of), "committed": len(done), "failed": len(failed), "pending": len(pending)},
        # The job's images (a row makes images_per_row of them), ok or error as the done markers count
        # them (one metadata row each): "input_rows" counts the rows.
        "images": {
            "total": sum(images_of.values()),
            "ok": sum(m["ok"] for m in markers),
            "error": sum(m["error"] for m in markers),
            "in_failed_shards": sum(images_of[i] for i in failed),
            "pending": sum(images_of[i] for i in pending),
        },
        "image_bytes": sum(m.get("image_bytes", 0) for m in markers),
        "failed": [
            {k: f.get(k) for k in ("shard", "error", "attempts", "infrastructure", "failed_at")} for f in failures
        ],
        "timings_s": summed_timings(markers),
        "nodes": per_node(markers),
        "startup": startup_report(markers),
        "device_kinds": device_kinds(markers),
        "variants": {c: spec.get(f"{c}_variant") for c in ("model", "vae", "controlnet") if spec.get(f"{c}_variant")},
    }


def device_kinds(markers: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per device kind (markers' ``device_kind``: "NVIDIA H200", "cpu"; "unknown" in markers written
    before it existed): shards, ok images, device-seconds (held by shards or idle before one) and
    images per device-second, i.e. one worker's images/s: what a measured run adds to the
    throughput table (jobs/estimate/throughput.json)."""
    kinds: dict[str, dict[str, Any]] = {}
    for marker in markers:
        tally_device(kinds, marker)
    return finish_device_kinds(kinds)


def tally_device(kinds: dict[str, dict[str, Any]], marker: dict[str, Any]) -> None:
    """Add one marker to ``kinds`` (the driver tallies as shards commit, keeping no marker)."""
    entry = kinds.setdefault(marker.get("device_kind") or "unknown", {"shards": 0, "images": 0, "device_s": 0.0})
    t = marker.get("timings_s", {})
    entry["shards"] += 1
    entry["images"] += marker.get("ok", 0)
    entry["device_s"] += t.get("render", 0.0) + t.get("device_idle_before", 0.0)


def finish_device_kinds(kinds: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The tallies rounded, with images per device-second, most shards first."""
    done = {}
    for kind, entry in kinds.items():
        seconds = round(entry["device_s"], 3)
        rate = round(entry["images"] / seconds, 2) if seconds > 0 else None
        done[kind] = {"shards": entry["shards"], "images": entry["images"], "device_s": seconds, "images_per_s": rate}
    return dict(sorted(done.items(), key=lambda kv: -kv[1]["shards"]))


PER_WORKER_RATE = "images/s per worker while rendering (device time)"


def devices_line(kinds: dict[str, dict[str, Any]]) -> str | None:
    """``devices: NVIDIA H200: 12 shards, 12,000 images, 52.30 images/s per worker while rendering (device
    time)``; None without markers. The rate says whose it is: one worker's ok images over its device time, not
    the job's images over wall time (which adds start-up and counts every worker at once)."""
    if not kinds:
        return None
    parts = [
        f"{kind}: {e['shards']} shards, {e['images']:,} images"
        + (f", {e['images_per_s']:.2f} {PER_WORKER_RATE}" if e["images_per_s"] else "")
        for kind, e in kinds.items()
    ]
    return "devices: " + "; ".join(parts)


def per_node(markers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Committed shards and images per Ray node (markers' ``node_id``; older markers and shards
    rendered without Ray have none and count under their host), most shards first."""
    by_node: dict[tuple[str | None, str | None], dict[str, Any]] = {}
    for marker in markers:
        node_id = marker.get("node_id")
        key = (node_id, None if node_id else marker.get("worker"))
        entry = by_node.setdefault(key, {"node_id": node_id, "host": marker.get("worker"), "shards": 0, "images": 0})
        entry["shards"] += 1
        entry["images"] += marker.get("ok", 0)
    return sorted(
        by_node.values(), key=lambda e: (-e["shards"], e["node_id"] is None, str(e["node_id"]), str(e["host"]))
    )


# Where the devices' time went, from the done markers' timings_s (docs/OUTPUT.md). A worker's
# device is either idle before a shard takes it, or held by a shard ("render"): in pipeline calls
# (decode, stats and copy to the host included: the device busy), blocked on the encode queue, or
# in the render loop's own work. Reading and committing overlap another shard's rendering; when
# they do not, they show as idle time between shards.
_SHARES = {
    "pipeline calls": lambda t: t["pipeline"],
    "idle between shards": lambda t: t["device_idle_before"],
    "waiting for encodes": lambda t: t["writer_wait"],
    "render loop": lambda t: t["render"] - t["pipeline"] - t["writer_wait"],
}
_SHARE_KEYS = {"pipeline", "device_idle_before", "writer_wait", "render"}


def summed_timings(markers: list[dict[str, Any]]) -> dict[str, float]:
    """Each timing summed over the shards (markers written before a timing existed lack it)."""
    total: dict[str, float] = {}
    for marker in markers:
        for name, seconds in marker.get("timings_s", {}).items():
            total[name] = total.get(name, 0.0) + seconds
    return total


def device_seconds(timings: dict[str, float]) -> float:
    """The devices' time the profile splits: held by shards, or idle before one took it."""
    return timings["render"] + timings["device_idle_before"]


def profile_line(timings: dict[str, float]) -> str | None:
    """Where the devices' time went, as shares; None without the timings (or time) to say it."""
    span = device_seconds(timings) if _SHARE_KEYS <= timings.keys() else 0.0
    if span <= 0:
        return None
    return ", ".join(f"{name} {100 * share(timings) / span:.1f}%" for name, share in _SHARES.items())


def format_status(status: dict[str, Any]) -> str:
    shards, images = status["shards"], status["images"]
    per_row = status["images_per_row"]
    lines = [
        f"output:  {status['output']}",
        f"plan:    {shards['total']} shards, {status['input_rows']:,} input rows -> {images['total']:,} images "
        f"({per_row} per row), model {status['model']}"
        + "".join(f", {c} variant {v}" for c, v in status.get("variants", {}).items())
        + f", planned {status['planned_at'] or 'at an unknown time'}",
        f"shards:  {shards['committed']} committed, {shards['failed']} failed, {shards['pending']} pending",
        f"images:  {images['ok']:,} ok, {images['error']:,} error (committed); {images['in_failed_shards']:,} in "
        f"failed shards, {images['pending']:,} pending; {status['image_bytes'] / 2**20:,.1f} MiB written",
    ]
    profile = profile_line(status["timings_s"])
    if profile:
        seconds = device_seconds(status["timings_s"])
        lines.append(f"device:  {profile} (of {seconds:,.0f} device-seconds in committed shards)")
    startup = startup_line(status.get("startup"))
    if startup:
        lines.append(f"{startup} (actors that committed a shard, all runs)")
    devices = devices_line(status.get("device_kinds") or {})
    if devices:
        lines.append(devices)
    for node in status["nodes"][:10]:
        name = f"node {node['node_id'][:12]}" if node["node_id"] else "no Ray node"
        lines.append(f"node:    {name} ({node['host']}): {node['shards']} shards, {node['images']:,} images")
    if len(status["nodes"]) > 10:
        lines.append(f"... and {len(status['nodes']) - 10} more nodes (see --json)")
    for f in status["failed"][:20]:
        lines.append(f"failed shard {f['shard']} (after {f['attempts']} attempt(s)): {f['error']}")
    if len(status["failed"]) > 20:
        lines.append(f"... and {len(status['failed']) - 20} more (see _failed/)")
    if shards["failed"] or shards["pending"]:
        lines.append("run the render command again to finish the failed and pending shards")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "turbobatch status") -> int:
    p = argparse.ArgumentParser(prog=prog, description="Show a render job's progress from its output folder.")
    p.add_argument("output", help="the job's output folder URL")
    p.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    p.add_argument(
        "--storage-options",
        type=json_object("--storage-options"),
        default={},
        help="fsspec options for the output, as JSON (as for the render job)",
    )
    p.add_argument(
        "--watch",
        nargs="?",
        const=DEFAULT_INTERVAL_S,
        type=float,
        metavar="SECONDS",
        help=f"refresh every SECONDS (default {DEFAULT_INTERVAL_S:g}) until the job ends: shards, images, "
        "images/s over the last minutes, ETA, new failed shards; exit 0, or 1 if shards failed; with "
        "--json one JSON object per line and refresh",
    )
    p.add_argument(
        "--count", type=int, metavar="N", help="with --watch: stop after N refreshes (default: until the job ends)"
    )
    args = p.parse_args(argv)
    if args.watch is not None and not args.watch > 0:
        p.error(f"--watch: {args.watch:g} is not valid; expected seconds between refreshes, more than 0")
    if args.count is not None and (args.watch is None or args.count < 1):
        p.error("--count: expected a number of refreshes of 1 or more, with --watch")
    try:
        out = Folder(args.output, args.storage_options)
        if args.watch is not None:
            return watch_output(out, args.watch, args.count, args.json)
        status = job_status(out)
    except KeyboardInterrupt:
        return 130
    except JobError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - storage failures: say what and where
        print(
            f"error: output: cannot read {args.output}: {describe_error(e, args.output, args.storage_options)}",
            file=sys.stderr,
        )
        return 2
    print(json.dumps(status, indent=1) if args.json else format_status(status))
    return 0
