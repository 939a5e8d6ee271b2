"""GPU benchmark: turbobatch's worker vs a naive diffusers loop, and vs the card's FLOP limit.

sd-turbo and sdxl-turbo at 512x512, 1 step, random weights (``--weights random``), fp16, JPEG to a
local folder. Side by side in one run, alternating: (a) the naive loop, ``pipe(prompts).images``
then PIL save; (b) ``RenderWorker.render_shard`` (no Ray: the GPU machine has none). Prints
images/s of each, their ratio, FLOPs per image (flops.py, meta device) and the fraction of the
bf16 matrix-multiply rate measured on the same card in the same run.

``--variants`` adds workers changed by ``workers/speedups.py`` (one fresh worker per variant, so
changes never stack), timed in the same rounds as the unchanged one (baseline, v1, v2, ...),
with each variant's images/s, its ratio to the baseline, its first-shard time (compilation
included) and the largest pixel difference of its first images from the baseline's.

    python benchmarks/gpu.py                 # on a GPU machine (make gpu-check)
    python benchmarks/gpu.py --variants channels_last,fuse_qkv,compile_unet
    python benchmarks/gpu.py --trace out/    # also a torch.profiler table of one shard per model
    python benchmarks/gpu.py --smoke         # CPU, tiny model: checks the code path only
"""

from __future__ import annotations

import argparse
import gc
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from benchmarks.breakdown import breakdown_line, component_times  # noqa: E402
from benchmarks.flops import flops_per_image  # noqa: E402
from jobs.plan import Shard  # noqa: E402
from jobs.spec import JobSpec  # noqa: E402
from jobs.status import profile_line, summed_timings  # noqa: E402
from workers import speedups  # noqa: E402
from workers.actor import RenderWorker  # noqa: E402
from workers.rows import rows_from_table  # noqa: E402

SMOKE_COMPILE_LIMIT_S = 240  # on CPU, torch.compile of even the tiny UNet takes ~70 s cold
COMPARED_IMAGES = 4  # at least; on a GPU one full batch, so a compiled UNet sees no new shape


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


def worker_run(worker: RenderWorker, data: Path, rows: int, device: str) -> tuple[float, dict]:
    """Images/s of one whole shard, and its done marker."""
    sync(device)
    started = time.perf_counter()
    marker = worker.render_shard(Shard(0, f"file://{data}", 0, rows, 0, 9))
    sync(device)
    rate = rows / (time.perf_counter() - started)
    if marker["ok"] != rows:  # a row the pipeline raised on would inflate images/s
        raise RuntimeError(f"only {marker['ok']} of {rows} rows rendered; see {worker.spec.output}/_done")
    return rate, marker


def trace_shard(worker: RenderWorker, data: Path, rows: int, device: str, path: Path) -> None:
    """One more shard under torch.profiler: the ops that took the most device time (CPU time on
    CPU), to split what the component breakdown leaves as "everything else"."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    # By default the profiler records only the thread that starts it; pipeline calls run on the
    # worker's device thread. profile_all_threads: torch >= 2.7 (pytorch/pytorch#143659).
    every_thread = torch._C._profiler._ExperimentalConfig(profile_all_threads=True)
    with profile(activities=activities, experimental_config=every_thread) as prof:
        worker_run(worker, data, rows, device)
    sort = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=60))
    print(f"profile of one baseline shard: {path}", flush=True)


class CompileTimeout(BaseException):
    """Raised by the smoke time limit; a BaseException so the renderer's per-row catch lets it through."""


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    if not seconds:
        yield
        return

    def on_alarm(signum, frame):
        raise CompileTimeout(f"took over {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Variant:
    name: str
    worker: RenderWorker
    first_s: float  # the warm-up shard: compilation, autotuning, first-call allocations
    images: list[np.ndarray]  # the first rows' uint8 images, for the pixel comparison
    batch: int  # rows per pipeline call at the start; the renderer halves it after an out-of-memory
    rates: list[float] = field(default_factory=list)
    markers: list[dict] = field(default_factory=list)  # of the timed runs: their timings_s profile the worker


def first_images(worker: RenderWorker, data: Path) -> list[np.ndarray]:
    """The renderer's uint8 images of the first rows (before encoding), one full pipeline call on a GPU."""
    n = max(COMPARED_IMAGES, worker.renderer.rows_per_call)
    shard = Shard(0, f"file://{data}", 0, n, 0, 9)
    results = list(worker.renderer.render(rows_from_table(worker.reader.read(shard), shard, worker.spec)))
    failed = [r.error for r in results if not hasattr(r, "image")]
    if failed:
        raise RuntimeError(f"{len(failed)} of {n} rows failed; first: {failed[0]}")
    return [r.image for r in results]


def build_variant(name: str, spec: JobSpec, data: Path, rows: int) -> Variant:
    """A fresh worker with speedup ``name`` applied ("baseline": none), warmed up on the shard."""
    worker = RenderWorker(spec)
    batch = worker.renderer.rows_per_call
    if name != "baseline":
        speedups.apply(worker.renderer.pipe, name)
    started = time.perf_counter()
    worker_run(worker, data, rows, spec.device)  # warm-up
    first_s = time.perf_counter() - started
    return Variant(name, worker, first_s, first_images(worker, data), batch)


def free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def try_variant(name: str, spec: JobSpec, data: Path, rows: int, smoke: bool) -> Variant | str:
    """The warmed-up variant, or why it was skipped. On a GPU a failing variant is reported and
    skipped (the others are still measured); in smoke only a compiling variant may fail or time out."""
    compiling = name in speedups.COMPILING
    try:
        with time_limit(SMOKE_COMPILE_LIMIT_S if smoke and compiling else None):
            return build_variant(name, spec, data, rows)
    except (Exception, CompileTimeout) as e:
        if smoke and not compiling:
            raise
        if compiling:
            torch._dynamo.reset()  # drop half-built graphs
        free(spec.device)
        first_line = (str(e).strip().splitlines() or [""])[0]
        return f"{'smoke, ' if smoke else ''}{type(e).__name__}: {first_line}"


def make_job(model: str, args: argparse.Namespace, work: Path) -> tuple[JobSpec, list[str], Path]:
    smoke = args.smoke
    device, dtype = ("cpu", "float32") if smoke else ("cuda", "float16")
    size, rows = (64, args.images) if smoke else (512, args.images)
    prompts = [f"a photo of object {i}, detailed, studio light" for i in range(rows)]
    data = work / "prompts.parquet"
    pq.write_table(pa.table({"prompt": prompts}), data)
    spec = JobSpec(input=str(data), output=str(work / "worker"), model=model,
                   weights="pretrained" if smoke else "random", device=device, dtype=dtype, height=size, width=size,
                   batch_size=args.batch_size, shard_size=rows, image_format="jpeg")  # fmt: skip
    return spec, prompts, data


def variant_summary(v: Variant, base: Variant) -> dict[str, float | int]:
    diffs = [np.abs(a.astype(np.int16) - b.astype(np.int16)) for a, b in zip(v.images, base.images)]
    return {"img_s": statistics.median(v.rates), "ratio": statistics.median(v.rates) / statistics.median(base.rates),
            "first_s": v.first_s, "max_diff": int(max(d.max() for d in diffs)),
            "mean_diff": float(np.mean([d.mean() for d in diffs])), "compared": len(diffs),
            "batch": v.batch, "final_batch": v.worker.renderer.rows_per_call}  # fmt: skip


def bench(model: str, args: argparse.Namespace, work: Path) -> dict:
    spec, prompts, data = make_job(model, args, work)
    size, rows, device = spec.height, len(prompts), spec.device
    variants, skipped = [build_variant("baseline", spec, data, rows)], {}
    for name in args.variants:
        v = try_variant(name, spec, data, rows, args.smoke)
        if isinstance(v, Variant):
            variants.append(v)
        else:
            skipped[name] = v
    pipe = variants[0].worker.renderer.pipe  # the same weights for the naive loop
    (work / "naive").mkdir(exist_ok=True)
    naive_loop(pipe, prompts[: args.batch_size], args.batch_size, size, work / "naive", device)  # warm-up
    naive = []
    for _ in range(args.runs):  # interleaved: naive, baseline, v1, v2, ...
        naive.append(naive_loop(pipe, prompts, args.batch_size, size, work / "naive", device))
        for v in variants:
            rate, marker = worker_run(v.worker, data, rows, device)
            v.rates.append(rate)
            v.markers.append(marker)
    flops = flops_per_image(pipe, size, size)
    base = variants[0]
    with component_times(pipe, cuda=device == "cuda") as totals:  # one more baseline shard, hooked
        rate, _ = worker_run(base.worker, data, rows, device)
    if args.trace:
        trace_shard(base.worker, data, rows, device, args.trace / f"profile-{model.split('/')[-1]}.txt")
    result = {"naive_img_s": statistics.median(naive), "worker_img_s": statistics.median(base.rates),
              "profile": profile_line({**summed_timings(base.markers), "device_idle_before": 0.0}),
              "flops_per_image": flops["total"], "skipped": skipped,
              "breakdown": breakdown_line(totals, rows, rows / rate, flops),
              "variants": {v.name: variant_summary(v, base) for v in variants} if args.variants else {}}  # fmt: skip
    result["ratio"] = result["worker_img_s"] / result["naive_img_s"]
    for v in variants:
        v.worker.pool.shutdown()
    del variants, base, pipe
    free(device)
    return result


def variant_lines(model: str, r: dict) -> list[str]:
    lines = []
    for name, s in r["variants"].items():
        line = f"{model} [{name}]: {s['img_s']:.1f} img/s, {s['ratio']:.3f}x baseline; first shard {s['first_s']:.1f} s"
        if name != "baseline":
            line += (f"; pixels vs baseline over {s['compared']} images: max abs diff {s['max_diff']}, "
                     f"mean {s['mean_diff']:.4f}")  # fmt: skip
            if name in speedups.CHANGES_PIXELS:
                line += " (different images by design)"
        if s["final_batch"] != s["batch"]:  # all workers share the GPU: one may have run short of memory
            line += f"; NOT COMPARABLE: batch halved {s['batch']} -> {s['final_batch']} after out-of-memory"
        lines.append(line)
    return lines + [f"{model} [{name}]: skipped ({why})" for name, why in r["skipped"].items()]


def parse_variants(text: str) -> list[str]:
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    for name in names:
        speedups.get(name)  # ValueError naming the valid ones
    return names


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["stabilityai/sd-turbo", "stabilityai/sdxl-turbo"])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    names = ", ".join(speedups.SPEEDUPS)
    parser.add_argument("--variants", default="", metavar="NAME[,NAME...]",
                        help=f"also time workers changed by workers/speedups.py ({names}), side by side")  # fmt: skip
    parser.add_argument("--trace", type=Path, metavar="DIR",
                        help="also profile one baseline shard per model (torch.profiler) into DIR/profile-MODEL.txt")
    parser.add_argument("--smoke", action="store_true", help="CPU + tiny model: exercise the code, measure nothing")
    args = parser.parse_args()
    try:
        args.variants = parse_variants(args.variants)
    except ValueError as e:
        parser.error(str(e))
    if args.smoke:
        args.models, args.images, args.batch_size, args.runs = ["tiny-sd-turbo"], 8, 4, 1
    elif not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs CUDA (use --smoke to check the code path on CPU)")
    return args


def main() -> None:
    args = parse_args()
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # the naive SDXL loop warns twice per call (VAE upcast to float32 and back)
    peak = None if args.smoke else matmul_rate("cuda")
    card = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name()
    measured = f"; bf16 matmul {peak / 1e12:.0f} TFLOP/s measured" if peak else ""
    print(f"card: {card}; torch {torch.__version__}{measured}")
    for model in args.models:
        with tempfile.TemporaryDirectory(prefix="tb-gpu-") as tmp:
            r = bench(model, args, Path(tmp))
        line = (f"{model}: naive loop {r['naive_img_s']:.1f} img/s, turbobatch worker {r['worker_img_s']:.1f} img/s, "
                f"ratio {r['ratio']:.2f}; {r['flops_per_image'] / 1e12:.2f} TFLOP/image")  # fmt: skip
        if peak:
            fraction = r["worker_img_s"] * r["flops_per_image"] / peak
            line += f"; worker at {100 * fraction:.1f}% of the measured bf16 matmul rate"
        profile = (f"{model} worker profile (share of device time in the timed runs, gaps between runs left out): "
                   f"{r['profile']}")  # fmt: skip
        breakdown = f"{model} baseline worker, time per component (hooked shard; % of wall time): {r['breakdown']}"
        print("\n".join([line, profile, breakdown, *variant_lines(model, r)]), flush=True)


if __name__ == "__main__":
    main()
