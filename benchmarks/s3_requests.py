"""Count S3 requests by kind for a tar job, and requests per image.

Runs the real job (tiny model, local Ray) against moto's S3 server on 127.0.0.1 through the
project's counting proxy (tests/faultproxy.py, with no faults). Requests per shard do not depend
on the shard size, so PUTs per image fall as 1 / shard size.

    .venv/bin/python benchmarks/s3_requests.py --shards 10 --shard-size 1000
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from benchmarks.local_s3 import local_s3, options  # noqa: E402
from tests.faultproxy import FaultProxy  # noqa: E402
from turbobatch.jobs.cli import render_main as render  # noqa: E402


def run(shards: int, shard_size: int, size: int) -> None:
    rows = shards * shard_size
    with local_s3("bench") as (port, client):
        buf = io.BytesIO()
        pq.write_table(pa.table({"prompt": [f"prompt number {i}" for i in range(rows)]}), buf)
        client.put_object(Bucket="bench", Key="prompts/p.parquet", Body=buf.getvalue())
        with FaultProxy(port) as proxy:
            started = time.perf_counter()
            code = render(
                [
                    "s3://bench/prompts/",
                    "s3://bench/out",
                    "--model",
                    "tiny-sd-turbo",
                    "--shard-size",
                    str(shard_size),
                    "--height",
                    str(size),
                    "--width",
                    str(size),
                    "--image-format",
                    "jpeg",
                    "--storage-options",
                    json.dumps(options(proxy.url)),
                ]
            )
            elapsed = time.perf_counter() - started
    counts = dict(sorted(proxy.requests.items()))
    puts = sum(n for op, n in counts.items() if op in ("PUT", "PUT_PART", "CREATE_MULTIPART", "COMPLETE_MULTIPART"))
    print(f"exit code {code}; {shards} shards x {shard_size} rows = {rows} images in {elapsed:.0f} s")
    print(f"requests by kind: {counts}")
    print(f"total requests {sum(counts.values())}: {sum(counts.values()) / rows:.4f} per image")
    print(f"PUT-class requests {puts}: {puts / rows:.4f} per image, {puts / shards:.1f} per shard")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--size", type=int, default=16, help="image side in pixels (tiny model)")
    args = parser.parse_args()
    run(args.shards, args.shard_size, args.size)
