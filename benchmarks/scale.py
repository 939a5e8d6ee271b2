"""Planning, resume, status, watch and verify at scale, locally and on S3 (moto), with requests counted.

First (as before): 10M rows in 1,000 Parquet files planned from footers only (jobs/prepare/inputs.py +
jobs/prepare/plan.py), and resume state from the listing of 10,000 done markers (jobs/prepare/resume.py), locally
and on moto's S3 server through the counting proxy. Then, for a job of --shards shards (1,000
images each, markers of ~1.2 KB as workers write them): the plan for that many shards, the claim
(plan.json written), a rerun's prepare with no summaries yet and tidy, ``status`` (first: every marker
read, summaries written; or --summaries written), then "before" (every block of _done/ listed) and "after"
(complete blocks from their summaries) back to back: a rerun's prepare, ``status`` (also after 1% of the
markers were overwritten), the dataset card at the end of a run, two ``status --watch`` refreshes; and
``verify`` of --verify-shards committed shards (1,000 by default, ~1 min on moto: it reads every object).
--with-data puts a tar and a metadata object beside each marker on S3 (moto scans every key per LIST).
Defaults run in about 5 minutes. On S3, moto and the proxy run in a child process
(benchmarks/local_s3.py S3Process) and each step prints its requests by kind. Ends with one JSON line.

    .venv/bin/python benchmarks/scale.py --files 1000 --rows-per-file 10000 --markers 10000 \
        --shards 100000 --verify-shards 10000
    .venv/bin/python benchmarks/scale.py --skip-small --shards 100000 --verify-shards 1000 --only s3 \
        --with-data --summaries written
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import random
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from benchmarks.local_s3 import S3Process, local_s3, options  # noqa: E402
from turbobatch.jobs.card import write_card  # noqa: E402
from turbobatch.jobs.inspect.status import job_status  # noqa: E402
from turbobatch.jobs.inspect.verify import format_report, verify  # noqa: E402
from turbobatch.jobs.inspect.watch import OutputWatcher  # noqa: E402
from turbobatch.jobs.prepare import resume  # noqa: E402
from turbobatch.jobs.prepare.inputs import InputFile, scan_inputs  # noqa: E402
from turbobatch.jobs.prepare.plan import fingerprint, make_plan  # noqa: E402
from turbobatch.jobs.run.block_summaries import BlockSummaries  # noqa: E402
from turbobatch.output import layout, summary  # noqa: E402
from turbobatch.output.shard import Shard  # noqa: E402
from turbobatch.output.storage import Folder  # noqa: E402
from turbobatch.spec.resolved import ResolvedJob  # noqa: E402


class CountingFolder(Folder):
    """Counts listing calls made through the storage layer."""

    listings = 0

    def list_versions(self, rel: str, *args: Any) -> dict[str, str | None]:
        CountingFolder.listings += 1
        return super().list_versions(rel, *args)


def synthetic_inputs(root: Path, files: int, rows: int) -> None:
    """Files whose footers say ``rows`` rows; dictionary-encoded, so each is a few KB."""
    prompts = pa.array(["a synthetic prompt"] * rows).dictionary_encode()
    table = pa.table({"prompt": prompts})
    for i in range(files):
        pq.write_table(table, root / f"part-{i:05d}.parquet", row_group_size=rows)


def plan_local(files: int, rows: int) -> float:
    with tempfile.TemporaryDirectory(prefix="tb-scale-") as tmp:
        synthetic_inputs(Path(tmp), files, rows)
        started = time.perf_counter()
        inputs = scan_inputs(tmp)
        plan = make_plan(inputs, 1000)
        elapsed = time.perf_counter() - started
        total = sum(f.num_rows for f in inputs)
        print(
            f"plan: {total:,} rows in {len(inputs):,} files -> {len(plan):,} shards in {elapsed:.2f} s (footers only)"
        )
        return elapsed


def resume_local(markers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="tb-scale-") as tmp:
        (Path(tmp) / layout.DONE_DIR).mkdir()
        for i in range(markers):
            (Path(tmp) / layout.done_path(i)).write_text("{}")
        out = CountingFolder(tmp)
        CountingFolder.listings = 0
        started = time.perf_counter()
        done = resume.committed_shards(out)
        print(
            f"resume (local): {len(done):,} done markers in {time.perf_counter() - started:.3f} s, "
            f"{CountingFolder.listings} listing call(s)"
        )


def resume_s3(markers: int) -> None:
    from tests.faultproxy import FaultProxy

    with local_s3("scale") as (port, client):
        for i in range(markers):
            client.put_object(Bucket="scale", Key=f"out/{layout.done_path(i)}", Body=b"{}")
        with FaultProxy(port) as proxy:
            out = CountingFolder("s3://scale/out", options(proxy.url))
            CountingFolder.listings = 0
            started = time.perf_counter()
            done = resume.committed_shards(out)
            elapsed = time.perf_counter() - started
    print(
        f"resume (S3, moto): {len(done):,} done markers in {elapsed:.2f} s, {CountingFolder.listings} listing "
        f"call(s) = {proxy.requests['LIST']} LIST request(s) (pages of 1,000)"
    )


# -- resume, status, watch and verify at scale (--shards, --verify-shards) ----------------------------------------
NODES = 64  # distinct Ray nodes in the synthetic markers (per-node counts in status)


def synthetic_marker(shard_id: int, redone: int = 0) -> dict[str, Any]:
    """A done marker as a worker writes it (workers/writer.py): ~1.2 KB, timings, node, files; the
    first marker of each of NODES actors carries a start-up record. ``redone`` changes the content."""
    rng = random.Random(shard_id * 7919 + redone)
    node = shard_id % NODES
    render = round(rng.uniform(20, 40), 4)
    name = layout.shard_name(shard_id)
    marker: dict[str, Any] = {
        "shard": shard_id,
        "rows": 1000,
        "ok": 998 + redone % 2,
        "error": 2 - redone % 2,
        "image_bytes": 41_000_000 + rng.randrange(1_000_000),
        "files": {
            f"shards/{name}.tar": {"bytes": 42_000_000 + shard_id, "sha256": f"{rng.getrandbits(256):064x}"},
            f"metadata/{name}.parquet": {"bytes": 90_000 + shard_id, "sha256": f"{rng.getrandbits(256):064x}"},
        },
        "spec_hash": "5f0c" * 16,
        "timings_s": {
            "read": round(rng.uniform(0.1, 1), 4),
            "device_wait": round(rng.uniform(0, 2), 4),
            "device_idle_before": round(rng.uniform(0, 1), 4),
            "render": render,
            "pipeline": round(render * 0.9, 4),
            "writer_wait": round(rng.uniform(0, 1), 4),
            "commit": round(rng.uniform(0.5, 2), 4),
            "total": round(render + 3, 4),
        },
        "worker": f"ip-10-0-{node // 8}-{node % 8}",
        "node_id": f"{node:056x}",
        "pid": 1000 + node,
        "device_kind": "NVIDIA H100 80GB HBM3",
        "committed_at": f"2026-12-06T{shard_id // 3600 % 24:02d}:{shard_id // 60 % 60:02d}:{shard_id % 60:02d}"
        f".{redone:03d}+00:00",
    }
    if shard_id < NODES:
        marker["startup_s"] = {"fetch": round(rng.uniform(5, 60), 3), "load": 8.5, "first_batch": 3.1}
        marker["model_fetch"] = [
            {"component": "model", "action": "copied", "bytes": 5_200_000_000, "seconds": 40.0, "waited_s": 0.0}
        ]
    return marker


def marker_objects(prefix: str, ids: range, redone: int = 0, data: bool = False) -> Iterator[tuple[str, bytes]]:
    """(key, bytes) of done markers, as Folder.write_json writes them (filled in the S3 child, or locally); with
    ``data``, a 1-byte tar and metadata object beside each (moto scans every key of the bucket on each LIST)."""
    for i in ids:
        marker = json.dumps(synthetic_marker(i, redone), indent=1, sort_keys=True, ensure_ascii=False).encode()
        yield f"{prefix}{layout.done_path(i)}", marker
        if data:
            yield from ((f"{prefix}{rel}", b"x") for rel in (layout.tar_path(i), layout.metadata_path(i)))


def job_for(out: Folder, shards: int, files: int) -> tuple[ResolvedJob, list[Shard], dict[str, Any]]:
    """A plan of ``shards`` shards of 1,000 images over ``files`` inputs (footers as scan_inputs reads them)."""
    rows = shards * 1000 // files
    inputs = [InputFile(f"s3://inputs/part-{i:05d}.parquet", 4096, rows, {"prompt": "string"}) for i in range(files)]
    spec = ResolvedJob(input="s3://inputs/", output=out.url, shard_size=1000)
    return spec, make_plan(inputs, spec.shard_size), fingerprint(inputs, spec)


class Steps:
    """Times each step and, on S3, counts its requests through the proxy; keeps every figure for the JSON line."""

    def __init__(self, where: str, server: S3Process | None) -> None:
        self.where, self.server, self.figures = where, server, {}

    def run(self, name: str, step: Callable[[], Any], note: str = "") -> Any:
        if self.server:
            self.server.reset()
        started = time.perf_counter()
        result = step()
        seconds = time.perf_counter() - started
        requests = self.server.requests() if self.server else {}
        self.figures[name] = {"s": round(seconds, 3), **({"requests": requests} if self.server else {})}
        kinds = ", ".join(f"{k} {n:,}" for k, n in sorted(requests.items()))
        print(
            f"{name} ({self.where}): {seconds:.2f} s"
            + (f"; requests: {kinds or 'none'}" if self.server else "")
            + (f"; {note}" if note else ""),
            flush=True,
        )
        return result


@contextlib.contextmanager
def every_block_listed() -> Iterator[None]:
    """ "Before": resume, status, the card and the watch list every block of _done/, as they did before complete
    blocks were taken from their summaries (resume.done_listing with trust_summaries=False)."""
    real = resume.done_listing

    def every_block(*args: Any, **kwargs: Any) -> resume.DoneListing:
        return real(*args, **{**kwargs, "trust_summaries": False, "skip": ()})

    resume.done_listing = every_block
    try:
        yield
    finally:
        resume.done_listing = real


def before(step: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        with every_block_listed():
            return step()

    return run


def summary_objects(prefix: str, ids: range) -> Iterator[tuple[str, bytes]]:
    """The summaries (output/summary.py) of marker_objects' markers, as a status or the card of a finished run
    writes them: each entry names the version a listing gives (size and MD5 ETag: moto's, as S3's for one PUT)."""
    for start in range(ids.start, ids.stop, layout.SUMMARY_BLOCK):
        shards = {}
        for i in range(start, min(ids.stop, start + layout.SUMMARY_BLOCK)):
            marker = synthetic_marker(i)
            data = json.dumps(marker, indent=1, sort_keys=True, ensure_ascii=False).encode()
            shards[str(i)] = [f"{len(data)}:{hashlib.md5(data).hexdigest()}", summary.summarize(marker)]
        text = json.dumps({"format": summary.FORMAT, "shards": shards}, separators=(",", ":")).encode()
        yield f"{prefix}{layout.summary_path(start // layout.SUMMARY_BLOCK)}", gzip.compress(text)


def status_steps(
    steps: Steps,
    out: Folder,
    shards: int,
    fill: Callable[[range, int], None],
    fill_summaries: Callable[[range], None] | None = None,
) -> None:
    """Claim an output for ``shards`` shards, commit them all, then what a rerun, status, the card and a watch
    cost: "before" lists every block of _done/, "after" takes complete blocks from their summaries (on S3;
    locally _done/ is listed whole either way). ``fill_summaries``: write the summaries as a finished run's
    card would, instead of a first status reading every marker (573 s on moto at 100,000 shards)."""
    spec, plan, prints = job_for(out, shards, 100)
    steps.run("claim (plan.json, spec.json written)", lambda: resume.prepare(out, spec, plan, prints))
    started = time.perf_counter()
    fill(range(shards), 0)
    print(f"  (setup: {shards:,} done markers written in {time.perf_counter() - started:.1f} s)", flush=True)
    prepare = lambda: resume.prepare(out, spec, plan, prints)  # noqa: E731
    done = steps.run("resume: prepare, no summaries yet (a run killed before any status or card)", prepare)
    assert len(done) == shards, len(done)
    steps.run("resume: tidy (_failed/ listing, leftovers)", lambda: resume.tidy(out, done))
    if fill_summaries:
        fill_summaries(range(shards))
        print("  (setup: summaries written as a finished run's card writes them)", flush=True)
    else:
        steps.run("status, first (no summaries: every marker read)", lambda: job_status(out))
    assert len(steps.run("resume: prepare, before (every block listed)", before(prepare))) == shards
    assert len(steps.run("resume: prepare, after (complete blocks from summaries)", prepare)) == shards
    first = steps.run("status, before (every block listed)", before(lambda: job_status(out)))
    again = steps.run("status, after", lambda: job_status(out))
    assert again == first
    redo = max(1, shards // 100)
    fill(range(0, shards, shards // redo), 1)  # 1% of the shards redone: their markers overwritten
    redone = steps.run(f"status, {redo:,} markers overwritten, before", before(lambda: job_status(out)))
    assert redone["images"]["ok"] == first["images"]["ok"] + redo, (redone["images"], first["images"])
    steps.run(
        f"status, {redo:,} markers overwritten, after",
        lambda: job_status(out),
        "complete blocks: their summaries' entries (the summaries the 'before' status rewrote)",
    )
    steps.run("end of run: dataset card, before", before(lambda: write_card(out, spec)))
    steps.run("end of run: dataset card, after", lambda: write_card(out, spec))
    with every_block_listed():
        watcher = OutputWatcher(out)
        steps.run("watch, before: first refresh", watcher.refresh)
        steps.run("watch, before: next refresh", watcher.refresh)
    watcher = OutputWatcher(out)
    steps.run("watch, after: first refresh", watcher.refresh)
    steps.run("watch, after: next refresh", watcher.refresh, "lists only blocks not complete (none here)")


def verify_objects(prefix: str, shards: int) -> Iterator[tuple[str, bytes]]:
    """A tar job's committed shards of 4 images each: tar, metadata and done marker (the same bytes for every shard)."""
    tar, meta = io.BytesIO(), io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as t:
        for key in range(4):
            for ext, data in (("png", b"png bytes"), ("json", b"{}")):
                info = tarfile.TarInfo(f"{key:09d}.{ext}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    pq.write_table(pa.table({"status": ["ok"] * 4}), meta)
    for i in range(shards):
        files = {layout.tar_path(i): tar.getvalue(), layout.metadata_path(i): meta.getvalue()}
        marker = {
            "shard": i,
            "rows": 4,
            "ok": 4,
            "error": 0,
            "image_bytes": 36,
            "files": {
                rel: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()} for rel, data in files.items()
            },
        }
        yield from ((prefix + rel, data) for rel, data in files.items())
        yield prefix + layout.done_path(i), json.dumps(marker, indent=1, sort_keys=True).encode()


def verify_steps(steps: Steps, out: Folder, shards: int, fill: Callable[[int], None]) -> None:
    spec, plan, prints = job_for(out, shards, 1)
    resume.prepare(out, spec, plan, prints)
    fill(shards)
    report = steps.run(f"verify, {shards:,} shards", lambda: verify(out))
    assert report.ok and report.committed == shards, format_report(report)


def driver_summaries(out: Folder, shards: int) -> None:
    """What the driver does during a run (jobs/run/block_summaries.py): each block's summary written on its
    thread when the block's last shard commits, from the markers the actors returned; waited for here."""
    summaries = BlockSummaries(out, shards, done=set())
    for i in range(shards):
        summaries.committed(i, synthetic_marker(i))
    summaries.close()


def scale_local(shards: int, verify_shards: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tb-scale-") as tmp:
        steps = Steps("local", None)

        def put(objects: Iterator[tuple[str, bytes]]) -> None:
            for rel, data in objects:
                path = Path(tmp) / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)

        status_steps(steps, Folder(f"{tmp}/out"), shards, lambda ids, redone: put(marker_objects("out/", ids, redone)))
        verify_steps(steps, Folder(f"{tmp}/verify"), verify_shards, lambda n: put(verify_objects("verify/", n)))
        return steps.figures


def scale_s3(shards: int, verify_shards: int, data: bool, summaries: str | None) -> dict[str, Any]:
    with S3Process("scale") as server:
        steps = Steps("S3, moto" + (", with tars and metadata" if data else ""), server)
        out = Folder("s3://scale/out", options(server.url))
        fill_summaries = {
            None: None,
            "written": lambda ids: server.fill(summary_objects, "out/", ids),
            "driver": lambda ids: steps.run(
                "driver: each block's summary as its last shard commits", lambda: driver_summaries(out, shards)
            ),
        }[summaries]
        status_steps(
            steps,
            out,
            shards,
            lambda ids, redone: server.fill(marker_objects, "out/", ids, redone, data and not redone),
            fill_summaries,
        )
        verify_steps(
            steps,
            Folder("s3://scale/verify", options(server.url)),
            verify_shards,
            lambda n: server.fill(verify_objects, "verify/", n),
        )
        return steps.figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--rows-per-file", type=int, default=10_000)
    parser.add_argument("--markers", type=int, default=10_000)
    parser.add_argument("--shards", type=int, default=10_000, help="shards of the status/resume/watch job")
    parser.add_argument("--verify-shards", type=int, default=1_000, help="committed shards verify checks")
    parser.add_argument("--only", choices=("local", "s3"), help="measure --shards on one store only")
    parser.add_argument(
        "--with-data",
        action="store_true",
        help="on S3, a tar and a metadata object (1 byte) beside each marker: a bucket as large as a real output's",
    )
    parser.add_argument(
        "--summaries",
        choices=("written", "driver"),
        help="on S3, instead of a first status that reads every marker (573 s at 100,000): the summaries written "
        "directly (as a finished run's card writes them), or by the driver's code as each block completes",
    )
    parser.add_argument("--skip-small", action="store_true", help="skip the plan / 10,000-marker figures at the start")
    args = parser.parse_args()
    if not args.skip_small:
        plan_local(args.files, args.rows_per_file)
        resume_local(args.markers)
        resume_s3(args.markers)
    figures: dict[str, Any] = {"plan_s": round(plan_local(1000, args.shards), 3)}
    if args.only != "s3":
        figures["local"] = scale_local(args.shards, args.verify_shards)
    if args.only != "local":
        figures["s3_moto"] = scale_s3(args.shards, args.verify_shards, args.with_data, args.summaries)
    print(
        json.dumps({"shards": args.shards, "verify_shards": args.verify_shards, "with_data": args.with_data, **figures})
    )
