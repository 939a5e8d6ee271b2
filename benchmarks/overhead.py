"""What the system costs over a plain batched diffusers loop, on this CPU, with the tiny model.

(a) a plain single-process loop: ``pipe(prompts[i:i+B], generator=[...])`` per batch of the same
    batch size B, PNG encode in memory;
(b) ``turbobatch render`` with 1 worker into a local folder, end to end (Ray start, actor start, model
    load, Parquet, tars, metadata, done markers).
Its marginal throughput — what a long job gets once started — is the images committed after its
first shard over the time from the first commit to the last (done markers' ``committed_at``):
start-up and the first batch's warm-up fall outside. Runs alternate a, b, a, b, ..., a, and the
median ratio of each marginal throughput to the mean of the two loops around it is printed, with
the end-to-end ratio and the fixed cost (end-to-end time minus the images at the marginal rate).

Then the actor's profile, from the done markers' ``timings_s`` of the last run (jobs/inspect/status.py):
the share of device time spent in pipeline calls and where the rest went.

    .venv/bin/python benchmarks/overhead.py --rows 960 --runs 3 --batch-size 8
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from turbobatch.jobs.cli import render_main as render  # noqa: E402
from turbobatch.jobs.inspect.status import profile_line, summed_timings  # noqa: E402
from turbobatch.models.tiny import tiny_model_path  # noqa: E402

SIZE = 64


def bare_loop(pipe, prompts: list[str], batch: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(prompts), batch):
        images = pipe(
            prompts[i : i + batch],
            num_inference_steps=1,
            guidance_scale=0.0,
            height=SIZE,
            width=SIZE,
            generator=[torch.Generator("cpu").manual_seed(j) for j in range(i, i + batch)],
        ).images
        for image in images:
            image.save(io.BytesIO(), format="PNG")
    return time.perf_counter() - started


def bracket(loop: list[float], run: int) -> float:
    """The loop's images/s around turbobatch render run ``run``: the mean of the loops before and after it."""
    return (loop[run] + loop[run + 1]) / 2


def system(data: Path, out: Path, shard_size: int, batch: int) -> tuple[float, float, dict[str, float]]:
    """End-to-end seconds of turbobatch render, its marginal images/s, and its shards' timings summed."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    code = render(
        [
            str(data),
            str(out),
            "--model",
            "tiny-sd-turbo",
            "--workers",
            "1",
            "--shard-size",
            str(shard_size),
            "--height",
            str(SIZE),
            "--width",
            str(SIZE),
            "--batch-size",
            str(batch),
        ]
    )
    elapsed = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"turbobatch render exited {code}")
    markers = [json.loads(p.read_text()) for p in (out / "_done").glob("*.json")]
    commits = sorted((datetime.fromisoformat(m["committed_at"]), m["ok"]) for m in markers)
    marginal = sum(ok for _, ok in commits[1:]) / (commits[-1][0] - commits[0][0]).total_seconds()
    return elapsed, marginal, summed_timings(markers)


def run(rows: int, runs: int, shard_size: int, batch: int) -> None:
    from diffusers import AutoPipelineForText2Image

    prompts = [f"a photo of object number {i}, studio light" for i in range(rows)]
    work = Path(tempfile.mkdtemp(prefix="tb-overhead-"))
    pq.write_table(pa.table({"prompt": prompts}), work / "prompts.parquet")
    pipe = AutoPipelineForText2Image.from_pretrained(tiny_model_path("tiny-sd-turbo"))
    pipe.set_progress_bar_config(disable=True)
    bare_loop(pipe, prompts[: 2 * batch], batch)  # warm-up
    # Each turbobatch render run is bracketed by two loops (loop, run, loop, run, ..., loop) and compared
    # with their mean: this machine's speed drifts from minute to minute, and a bracket cancels a
    # steady drift that a single neighbour would put into the ratio.
    loop, marginal, end_to_end, fixed = [rows / bare_loop(pipe, prompts, batch)], [], [], []
    for i in range(runs):
        elapsed, rate, timings = system(work / "prompts.parquet", work / "out", shard_size, batch)
        loop.append(rows / bare_loop(pipe, prompts, batch))
        marginal.append(rate)
        end_to_end.append(rows / elapsed)
        fixed.append(elapsed - rows / rate)
        print(
            f"run {i + 1}: batched loop {loop[-2]:.1f} then {loop[-1]:.1f} img/s | turbobatch render {rate:.1f} img/s "
            f"marginal ({rate / bracket(loop, i):.3f}x), {end_to_end[-1]:.1f} img/s end to end over {rows} rows",
            flush=True,
        )
    shutil.rmtree(work, ignore_errors=True)
    median = statistics.median
    print(
        f"\n{rows} rows, {SIZE}x{SIZE}, tiny-sd-turbo, batch size {batch}, torch threads "
        f"{torch.get_num_threads()}, {os.cpu_count()} CPUs"
    )
    print(f"median images/s: batched loop {median(loop):.1f}, turbobatch render marginal {median(marginal):.1f}")
    print(
        f"median ratio turbobatch render / batched loop (the mean of the loops before and after each run): "
        f"{median(m / bracket(loop, i) for i, m in enumerate(marginal)):.3f} marginal, "
        f"{median(e / bracket(loop, i) for i, e in enumerate(end_to_end)):.3f} end to end ({rows} rows)"
    )
    print(f"median fixed cost (Ray start, actor start, model load, planning): {median(fixed):.1f} s per run")
    print(f"actor profile, last run (share of device time): {profile_line(timings)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=960)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--shard-size", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    run(args.rows, args.runs, args.shard_size, args.batch_size)
