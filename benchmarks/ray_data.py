"""turbobatch render against the Ray Data script a new user would write, end to end, on this CPU.

(a) Ray Data: ``read_parquet -> map_batches(a class holding the pipeline, batch_size=B,
    concurrency=1) -> write_parquet`` of PNG bytes (the script below, as a new user writes it
    from Ray's docs: its actor gets Ray's default of 1 CPU, so torch runs 1 thread; asking for
    the machine's 2 CPUs left no CPU for the read tasks and the job hung here);
(b) ``python -m turbobatch render`` with 1 worker: the same rows, model, size and batch size, into tars,
    metadata and done markers.
Each run is a fresh process (Ray start and model load included), alternating a, b, a, b, ...;
the median wall times and their ratio are printed.

    .venv/bin/python benchmarks/ray_data.py --rows 480 --runs 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

RAY_DATA_SCRIPT = """
import io, sys, ray, torch
from diffusers import AutoPipelineForText2Image
from turbobatch.models.tiny import tiny_model_path

src, dst, size, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

class Render:
    def __init__(self):
        self.pipe = AutoPipelineForText2Image.from_pretrained(tiny_model_path("tiny-sd-turbo"))
        self.pipe.set_progress_bar_config(disable=True)

    def __call__(self, rows):
        prompts = list(rows["prompt"])
        images = self.pipe(prompts, num_inference_steps=1, guidance_scale=0.0, height=size, width=size).images
        out = []
        for image in images:
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            out.append(buf.getvalue())
        return {"prompt": prompts, "png": out}

ray.init(include_dashboard=False, logging_level="ERROR")
ds = ray.data.read_parquet(src).map_batches(Render, batch_size=batch, concurrency=1)
ds.write_parquet(dst)
"""


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{command[:3]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=480)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    import pyarrow as pa
    import pyarrow.parquet as pq

    work = Path(tempfile.mkdtemp(prefix="tb-raydata-"))
    data = work / "prompts.parquet"
    pq.write_table(
        pa.table({"prompt": [f"a photo of object number {i}, studio light" for i in range(args.rows)]}), data
    )
    script = work / "ray_data_job.py"
    script.write_text(RAY_DATA_SCRIPT)
    ray_data, turbobatch = [], []
    for i in range(args.runs):
        shutil.rmtree(work / "a", ignore_errors=True)
        shutil.rmtree(work / "b", ignore_errors=True)
        ray_data.append(
            timed([sys.executable, str(script), str(data), str(work / "a"), str(args.size), str(args.batch_size)])
        )
        turbobatch.append(
            timed(
                [
                    sys.executable,
                    "-m",
                    "turbobatch",
                    "render",
                    str(data),
                    str(work / "b"),
                    "--model",
                    "tiny-sd-turbo",
                    "--workers",
                    "1",
                    "--height",
                    str(args.size),
                    "--width",
                    str(args.size),
                    "--batch-size",
                    str(args.batch_size),
                    "--shard-size",
                    "120",
                ]
            )
        )
        print(
            f"run {i + 1}: Ray Data script {ray_data[-1]:.1f} s, turbobatch render {turbobatch[-1]:.1f} s", flush=True
        )
    shutil.rmtree(work, ignore_errors=True)
    a, b = statistics.median(ray_data), statistics.median(turbobatch)
    print(f"\n{args.rows} rows, {args.size}x{args.size}, tiny-sd-turbo, batch size {args.batch_size}, end to end")
    print(
        f"median wall time: Ray Data script {a:.1f} s, turbobatch render {b:.1f} s; turbobatch render takes {b / a:.2f}x "
        f"the Ray Data script's time ({a / b:.2f}x its throughput)"
    )


if __name__ == "__main__":
    main()
