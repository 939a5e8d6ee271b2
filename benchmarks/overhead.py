"""What the system costs over a bare diffusers loop, on this CPU, with the tiny model.

(a) a plain single-process loop: pipeline call per batch, PNG encode in memory;
(b) ``jobs.render`` with 1 worker into a local folder: Ray start, actor start, model load,
    reading Parquet, writing tars, metadata and done markers included.
Runs alternate a, b, a, b, ... and the median ratio b/a is printed. CPU workers make one
pipeline call per row (bitwise determinism), so the bare loop uses batch size 1 too.

Then the actor's profile, from the done markers' ``timings_s`` summed over the last run's
shards (jobs/status.py): the share of device time spent in pipeline calls (on a GPU: the device
busy) and where the rest went (idle between shards, waiting for the encode queue, the render
loop's own work). "Inside the actor" counts device time: shards overlap (one commits while the
next renders), so the sum of their totals would count time twice.

    .venv/bin/python benchmarks/overhead.py --rows 240 --runs 3
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from jobs.render import main as render  # noqa: E402
from jobs.status import device_seconds, profile_line, summed_timings  # noqa: E402
from workers.tiny import tiny_model_path  # noqa: E402

SIZE = 64


def bare_loop(pipe, prompts: list[str]) -> float:
    started = time.perf_counter()
    for i, prompt in enumerate(prompts):
        image = pipe([prompt], num_inference_steps=1, guidance_scale=0.0, height=SIZE, width=SIZE,
                     generator=[torch.Generator("cpu").manual_seed(i)]).images[0]  # fmt: skip
        image.save(io.BytesIO(), format="PNG")
    return time.perf_counter() - started


def system(data: Path, out: Path, shard_size: int) -> tuple[float, dict[str, float]]:
    """End-to-end seconds, and the shards' timings summed."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    code = render([str(data), str(out), "--model", "tiny-sd-turbo", "--workers", "1", "--shard-size", str(shard_size),
                   "--height", str(SIZE), "--width", str(SIZE)])  # fmt: skip
    elapsed = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"jobs.render exited {code}")
    markers = [json.loads(p.read_text()) for p in (out / "_done").glob("*.json")]
    return elapsed, summed_timings(markers)


def run(rows: int, runs: int, shard_size: int) -> None:
    from diffusers import AutoPipelineForText2Image

    prompts = [f"a photo of object number {i}, studio light" for i in range(rows)]
    work = Path(tempfile.mkdtemp(prefix="tb-overhead-"))
    pq.write_table(pa.table({"prompt": prompts}), work / "prompts.parquet")
    pipe = AutoPipelineForText2Image.from_pretrained(tiny_model_path("tiny-sd-turbo"))
    pipe.set_progress_bar_config(disable=True)
    bare_loop(pipe, prompts[:8])  # warm-up
    a, b, inside, fixed = [], [], [], []
    for i in range(runs):
        a.append(rows / bare_loop(pipe, prompts))
        end_to_end, timings = system(work / "prompts.parquet", work / "out", shard_size)
        in_actor = device_seconds(timings)  # shards overlap: their totals would count time twice
        fixed.append(end_to_end - in_actor)
        b.append(rows / end_to_end)
        inside.append(rows / in_actor)
        print(f"run {i + 1}: bare loop {a[-1]:.1f} img/s | jobs.render {b[-1]:.1f} img/s end to end, "
              f"{inside[-1]:.1f} img/s inside the actor", flush=True)  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    ratios = [bb / aa for aa, bb in zip(a, b)]
    steady = [ii / aa for aa, ii in zip(a, inside)]
    print(f"\n{rows} rows, {SIZE}x{SIZE}, tiny-sd-turbo, torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs")
    print(f"median images/s: bare loop {statistics.median(a):.1f}, jobs.render {statistics.median(b):.1f}")
    print(f"median ratio jobs.render / bare loop: {statistics.median(ratios):.3f} end to end "
          f"(overhead {100 * (1 - statistics.median(ratios)):.1f}%), {statistics.median(steady):.3f} inside the actor")
    print(f"median fixed cost outside shard work (Ray start, actor start, model load, planning): "
          f"{statistics.median(fixed):.1f} s per run")
    print(f"actor profile, last run (share of device time): {profile_line(timings)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=240)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--shard-size", type=int, default=40)
    args = parser.parse_args()
    run(args.rows, args.runs, args.shard_size)
