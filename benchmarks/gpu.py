"""GPU benchmark: turbobatch's worker vs a naive diffusers loop, and vs the card's FLOP limit.

sd-turbo and sdxl-turbo at 512x512, 1 step, random weights (``--weights random``), fp16, JPEG to a
local folder. Side by side in one run, alternating: (a) the naive loop, ``pipe(prompts).images``
then PIL save; (b) ``RenderWorker.render_shard`` (no Ray: the GPU machine has none). Prints
images/s of each, their ratio, FLOPs per image (flops.py, meta device) and the fraction of the
bf16 matrix-multiply rate measured on the same card in the same run.

    python benchmarks/gpu.py                 # on a GPU machine (make gpu-check)
    python benchmarks/gpu.py --smoke         # CPU, tiny model: checks the code path only
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from benchmarks.flops import flops_per_image  # noqa: E402
from jobs.plan import Shard  # noqa: E402
from jobs.spec import JobSpec  # noqa: E402
from workers.actor import RenderWorker  # noqa: E402


def matmul_rate(device: str, n: int = 8192, reps: int = 20) -> float:
    """Measured bf16 matrix-multiply FLOP/s (median of ``reps``, CUDA events)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * n**3 / statistics.median(times)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def naive_loop(pipe, prompts: list[str], batch: int, size: int, out: Path, device: str) -> float:
    sync(device)
    started = time.perf_counter()
    for i in range(0, len(prompts), batch):
        images = pipe(prompts[i : i + batch], num_inference_steps=1, guidance_scale=0.0, height=size, width=size).images
        for j, image in enumerate(images):
            image.save(out / f"{i + j:06d}.jpg", quality=95)
    sync(device)
    return len(prompts) / (time.perf_counter() - started)


def worker_run(worker: RenderWorker, data: Path, rows: int, device: str) -> float:
    sync(device)
    started = time.perf_counter()
    worker.render_shard(Shard(0, f"file://{data}", 0, rows, 0, 9))
    sync(device)
    return rows / (time.perf_counter() - started)


def bench(model: str, args: argparse.Namespace, work: Path) -> dict[str, float]:
    smoke = args.smoke
    device, dtype = ("cpu", "float32") if smoke else ("cuda", "float16")
    size, rows = (64, args.images) if smoke else (512, args.images)
    prompts = [f"a photo of object {i}, detailed, studio light" for i in range(rows)]
    data = work / "prompts.parquet"
    pq.write_table(pa.table({"prompt": prompts}), data)
    spec = JobSpec(input=str(data), output=str(work / "worker"), model=model, weights="pretrained" if smoke else "random",
                   device=device, dtype=dtype, height=size, width=size, batch_size=args.batch_size, shard_size=rows,
                   image_format="jpeg")  # fmt: skip
    worker = RenderWorker(spec)
    pipe = worker.renderer.pipe  # the same weights for the naive loop
    (work / "naive").mkdir(exist_ok=True)
    naive_loop(pipe, prompts[: args.batch_size], args.batch_size, size, work / "naive", device)  # warm-up
    worker_run(worker, data, rows, device)  # warm-up
    a, b = [], []
    for _ in range(args.runs):
        a.append(naive_loop(pipe, prompts, args.batch_size, size, work / "naive", device))
        b.append(worker_run(worker, data, rows, device))
    flops = flops_per_image(pipe, size, size)
    result = {"naive_img_s": statistics.median(a), "worker_img_s": statistics.median(b), "flops_per_image": flops["total"]}
    result["ratio"] = result["worker_img_s"] / result["naive_img_s"]
    del worker, pipe
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["stabilityai/sd-turbo", "stabilityai/sdxl-turbo"])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="CPU + tiny model: exercise the code, measure nothing")
    args = parser.parse_args()
    if args.smoke:
        args.models, args.images, args.batch_size, args.runs = ["tiny-sd-turbo"], 8, 4, 1
    elif not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs CUDA (use --smoke to check the code path on CPU)")
    peak = None if args.smoke else matmul_rate("cuda")
    card = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name()
    print(f"card: {card}; torch {torch.__version__}" + (f"; bf16 matmul {peak / 1e12:.0f} TFLOP/s measured" if peak else ""))
    for model in args.models:
        with tempfile.TemporaryDirectory(prefix="tb-gpu-") as tmp:
            r = bench(model, args, Path(tmp))
        line = (f"{model}: naive loop {r['naive_img_s']:.1f} img/s, turbobatch worker {r['worker_img_s']:.1f} img/s, "
                f"ratio {r['ratio']:.2f}; {r['flops_per_image'] / 1e12:.2f} TFLOP/image")  # fmt: skip
        if peak:
            line += f"; worker at {100 * r['worker_img_s'] * r['flops_per_image'] / peak:.1f}% of the measured bf16 matmul rate"
        print(line, flush=True)


if __name__ == "__main__":
    main()
