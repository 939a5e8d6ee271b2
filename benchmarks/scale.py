"""Planning and resume at scale: 10M rows in 1,000 Parquet files, 10,000 done markers.

Plans by reading footers only (jobs/prepare/inputs.py + jobs/prepare/plan.py) and computes resume state from one
listing of _done/ (jobs/prepare/resume.py), locally and on moto's S3 server through the counting proxy,
where the listing is paged (1,000 keys a page). Prints seconds and listing calls.

    .venv/bin/python benchmarks/scale.py --files 1000 --rows-per-file 10000 --markers 10000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from benchmarks.local_s3 import local_s3, options  # noqa: E402
from turbobatch.jobs.prepare import resume  # noqa: E402
from turbobatch.jobs.prepare.inputs import scan_inputs  # noqa: E402
from turbobatch.jobs.prepare.plan import make_plan  # noqa: E402
from turbobatch.output import layout
from turbobatch.output.storage import Folder  # noqa: E402


class CountingFolder(Folder):
    """Counts listing calls made through the storage layer."""

    listings = 0

    def list_names(self, rel: str) -> list[str]:
        CountingFolder.listings += 1
        return super().list_names(rel)


def synthetic_inputs(root: Path, files: int, rows: int) -> None:
    """Files whose footers say ``rows`` rows; dictionary-encoded, so each is a few KB."""
    prompts = pa.array(["a synthetic prompt"] * rows).dictionary_encode()
    table = pa.table({"prompt": prompts})
    for i in range(files):
        pq.write_table(table, root / f"part-{i:05d}.parquet", row_group_size=rows)


def plan_local(files: int, rows: int) -> None:
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--rows-per-file", type=int, default=10_000)
    parser.add_argument("--markers", type=int, default=10_000)
    args = parser.parse_args()
    plan_local(args.files, args.rows_per_file)
    resume_local(args.markers)
    resume_s3(args.markers)
