"""GPU benchmark: the worker's speed changes, side by side, against a naive loop and the card's limit.

Each model of ``--models`` at its family's settings (``FAMILY_SETTINGS``): sd-turbo and sdxl-turbo at
512x512, 1 step, fp16; Z-Image-Turbo (8 steps, guidance 0) and FLUX.2 klein 4B (4 steps, guidance 1)
at 1024x1024 in bf16; random weights (``--weights random``), JPEG to a local folder, with the model's
VAE and, for the SD families, also with a tiny autoencoder (TAESD architecture, random weights). Per model and decoder, alternating in every round: the naive diffusers loop
(benchmarks/baselines.py), the previous worker (the pipeline's ``__call__``), and workers with
``--speedups``: ``none``, each change alone, ``default`` and ``all`` (the non-compiling ones).
All workers of a model share the UNet and text encoders; each has its own copy of the decoder
(the changes rewrite it). Printed per worker: images/s, ratio to the naive loop and to the
previous worker, share of the card's limit (FLOPs per image over the bf16 matmul rate measured
in the same run), first-shard seconds, and the largest pixel difference from a plain diffusers
call with the same seeds; then, for the fastest worker, time per component, the profile of its
device time and (``--trace``) a torch.profiler table of one shard.

    python benchmarks/gpu.py                          # on a GPU machine (make gpu-check)
    python benchmarks/gpu.py --variants previous,none,default --decoders vae
    python benchmarks/gpu.py --variants default,compile_decoder   # compiles: its own call
    python benchmarks/gpu.py --models Tongyi-MAI/Z-Image-Turbo black-forest-labs/FLUX.2-klein-4B \
        --decoders vae --batch-size 4 --images 16   # the DiT families side by side
    python benchmarks/gpu.py --smoke                  # CPU, tiny model: checks the code path only

A change that cannot apply to a model is not timed for it (``unet_fused_norms`` without a UNet,
``transformer_fused_norms`` without a transformer, the tiny decoder for a latent space it was not
made for); the output says so. Where benchmarks/flops.py cannot count a family yet, the FLOP columns
are left out.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from benchmarks.baselines import naive_loop, previous_worker, sync  # noqa: E402
from benchmarks.breakdown import breakdown_line, component_times  # noqa: E402
from benchmarks.flops import flops_per_image  # noqa: E402
from turbobatch.jobs.inspect.status import profile_line, summed_timings  # noqa: E402
from turbobatch.output.shard import Shard  # noqa: E402
from turbobatch.spec.job import DEFAULT_SPEEDUPS, SPEEDUPS, normalize_speedups  # noqa: E402
from turbobatch.spec.resolved import ResolvedJob  # noqa: E402
from turbobatch.workers.actor import RenderWorker  # noqa: E402
from turbobatch.workers.rows import rows_from_table  # noqa: E402
from turbobatch.workers.speedups import registry as speedups  # noqa: E402

# Per family: (size, dtype, steps, guidance) on a GPU; matched on the model name (Hub id, local folder,
# tiny twin). The DiT families' names come with issue 26 (models/): these match their Hub ids and twins.
FAMILY_SETTINGS = {
    "z-image": (1024, "bfloat16", 8, 0.0),
    "flux.2-klein": (1024, "bfloat16", 4, 1.0),
    "flux2-klein": (1024, "bfloat16", 4, 1.0),
    "sd": (512, "float16", 1, 0.0),
}
# Changes that need a part the pipeline may not have.
NEEDS_PART = {"unet_fused_norms": "unet", "transformer_fused_norms": "transformer"}
COMPARED_IMAGES = 4  # at least; on a GPU one full batch, so a compiled model sees no new shape
ALL = ",".join(n for n in SPEEDUPS if n not in speedups.COMPILING)
# label -> --speedups of that worker ("previous" is the pipeline-call worker, no speedups)
STANDARD = {
    "previous": "none",
    "none": "none",
    **{n: n for n in SPEEDUPS if n not in speedups.COMPILING},
    "default": ",".join(DEFAULT_SPEEDUPS),
    "all": ALL,
}


def matmul_rate(n: int = 8192, reps: int = 20) -> float:
    """Measured bf16 matrix-multiply FLOP/s (median of ``reps``, CUDA events)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
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


@dataclass
class Variant:
    label: str
    worker: RenderWorker
    first_s: float = 0.0  # the warm-up shard: compilation, cuDNN autotuning, first-call allocations
    images: list[np.ndarray] = field(default_factory=list)  # first rows' uint8 images
    rates: list[float] = field(default_factory=list)
    markers: list[dict] = field(default_factory=list)

    @property
    def cudnn_benchmark(self) -> bool:  # process-wide in torch: set before each of this worker's runs
        return "cudnn_benchmark" in self.worker.spec.speedup_set


def run_shard(v: Variant, data: Path, rows: int) -> float:
    """Images/s of one whole shard (its done marker kept for the profile)."""
    torch.backends.cudnn.benchmark = v.cudnn_benchmark
    device = v.worker.spec.device
    sync(device)
    started = time.perf_counter()
    marker = v.worker.render_shard(Shard(0, f"file://{data}", 0, rows, 0, 9))
    sync(device)
    if marker["ok"] != rows:  # a row the pipeline raised on would inflate images/s
        raise RuntimeError(f"{v.label}: only {marker['ok']} of {rows} rows rendered")
    v.markers.append(marker)
    return rows / (time.perf_counter() - started)


def first_images(v: Variant, data: Path) -> list[np.ndarray]:
    """The renderer's uint8 images of the first rows (before encoding): one full batch on a GPU."""
    worker = v.worker
    n = max(COMPARED_IMAGES, worker.renderer.rows_per_call)
    shard = Shard(0, f"file://{data}", 0, n, 0, 9)
    torch.backends.cudnn.benchmark = v.cudnn_benchmark
    results = list(worker.renderer.render(rows_from_table(worker.reader.read(shard), shard, worker.spec)))
    failed = [r.error for r in results if not hasattr(r, "image")]
    if failed:
        raise RuntimeError(f"{v.label}: {len(failed)} of {n} rows failed; first: {failed[0]}")
    return [r.image for r in results]


def applicable(changes: str, pipe: Any) -> str:
    """``changes`` less those needing a part ``pipe`` lacks ("all" on a transformer: no UNet fusion)."""
    kept = [n for n in changes.split(",") if getattr(pipe, NEEDS_PART.get(n, "vae"), None) is not None]
    return ",".join(kept) or "none"


def family_settings(model: str) -> tuple[int, str, int, float]:
    """(size, dtype, steps, guidance) of the model's family (``FAMILY_SETTINGS``; SD's otherwise)."""
    name = model.lower()
    return next((v for k, v in FAMILY_SETTINGS.items() if k in name), FAMILY_SETTINGS["sd"])


def plain_images(pipe: Any, spec: ResolvedJob, prompts: list[str], n: int) -> list[np.ndarray]:
    """What plain diffusers calls give for the first rows' prompts and seeds (job seed + index)."""
    gens = [torch.Generator(spec.device).manual_seed(spec.seed + i) for i in range(n)]
    out = pipe(
        prompt=prompts[:n],  # by name: FLUX.2 klein's first argument is a reference image
        num_inference_steps=spec.steps,
        guidance_scale=spec.guidance_scale,
        height=spec.height,
        width=spec.width,
        generator=gens,
        output_type="np",
    ).images
    return [(image * 255).round().astype(np.uint8) for image in out]


def with_decoder(pipe: Any, vae: Any) -> Any:
    """A pipeline sharing ``pipe``'s UNet and text encoders, with its own ``vae``."""
    own = type(pipe)(**{**pipe.components, "vae": vae})
    own.set_progress_bar_config(disable=True)
    return own


def build(label: str, changes: str, spec: ResolvedJob, pipe: Any, vae: Any, data: Path, rows: int) -> Variant:
    worker_spec = dataclasses.replace(spec, speedups=changes, output=f"{spec.output}-{label}")
    own = with_decoder(pipe, copy.deepcopy(vae))
    worker = previous_worker(worker_spec, own) if label == "previous" else RenderWorker(worker_spec, own)
    v = Variant(label, worker)
    started = time.perf_counter()
    run_shard(v, data, rows)  # warm-up
    v.first_s, v.markers = time.perf_counter() - started, []
    v.images = first_images(v, data)
    return v


def diff_line(images: list[np.ndarray], plain: list[np.ndarray]) -> str:
    diffs = [np.abs(a.astype(np.int16) - b.astype(np.int16)) for a, b in zip(images, plain)]
    return (
        f"vs plain diffusers over {len(diffs)} images: max abs diff {max(int(d.max()) for d in diffs)}, "
        f"mean {np.mean([d.mean() for d in diffs]):.4f}"
    )


def make_job(model: str, args: argparse.Namespace, work: Path) -> tuple[ResolvedJob, list[str], Path]:
    size, dtype, steps, guidance = family_settings(model)
    device, dtype, size = ("cpu", "float32", 64) if args.smoke else ("cuda", dtype, size)
    prompts = [f"a photo of object {i}, detailed, studio light" for i in range(args.images)]
    data = work / "prompts.parquet"
    pq.write_table(pa.table({"prompt": prompts}), data)
    spec = ResolvedJob(
        input=str(data),
        output=str(work / "worker"),
        model=model,
        device=device,
        dtype=dtype,
        weights="pretrained" if args.smoke else "random",
        height=size,
        width=size,
        steps=steps,
        guidance_scale=guidance,
        batch_size=args.batch_size,
        shard_size=len(prompts),
        image_format="jpeg",
    )
    return spec, prompts, data


def bench(model: str, decoder: str, args: argparse.Namespace, work: Path, peak: float | None) -> list[str]:
    """Every variant of one model with one decoder; returns the lines to print."""
    spec, prompts, data = make_job(model, args, work)
    rows, device, name = len(prompts), spec.device, f"{model} {decoder}"
    base = RenderWorker(dataclasses.replace(spec, speedups="none")).renderer.pipe  # loads the weights once
    if decoder == "tiny" and getattr(base, "unet", None) is None:
        return [f"{name}: not timed (the tiny TAESD-architecture decoder is for the SD families' latents)"]
    if decoder == "tiny":
        speedups.tiny_vae(base)
    vae = base.vae
    n = max(COMPARED_IMAGES, spec.batch_size)
    plain = plain_images(base, spec, prompts, n)
    variants, lines = [], []
    for label in args.variants:
        if decoder == "tiny" and label == "fused_norms":  # a tiny autoencoder has no GroupNorm: it is "none"
            continue
        if label == "previous" and getattr(base, "unet", None) is None:
            lines.append(f"{name} [previous]: not timed (the previous worker sampled the UNet families only)")
            continue
        if getattr(base, NEEDS_PART.get(label, "vae"), None) is None:  # it would time "none" again
            lines.append(f"{name} [{label}]: not timed (no {NEEDS_PART[label]} in this pipeline)")
            continue
        try:
            variants.append(build(label, applicable(args.changes[label], base), spec, base, vae, data, rows))
        except Exception as e:  # noqa: BLE001 - report it, measure the others
            if args.smoke and label not in speedups.COMPILING:
                raise
            lines.append(f"{name} [{label}]: skipped ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})")
            gc.collect()
    (work / "naive").mkdir(exist_ok=True)
    loop = {"steps": spec.steps, "guidance_scale": spec.guidance_scale}
    naive_loop(
        base, prompts[: spec.batch_size], spec.batch_size, spec.height, work / "naive", device, **loop
    )  # warm-up
    naive = []
    for _ in range(args.runs):  # interleaved: naive, v1, v2, ...
        torch.backends.cudnn.benchmark = False
        naive.append(naive_loop(base, prompts, spec.batch_size, spec.height, work / "naive", device, **loop))
        for v in variants:
            v.rates.append(run_shard(v, data, rows))
    try:
        per_part = flops_per_image(base, spec.height, spec.width, spec.steps)
    except Exception as e:  # noqa: BLE001 - a family benchmarks/flops.py does not count yet
        per_part = {}
        lines.insert(0, f"{name}: FLOPs not counted ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})")
    flops = per_part.get("total")
    naive_rate = statistics.median(naive)
    counted = f"; {flops / 1e12:.2f} TFLOP/image" if flops else ""
    lines.insert(0, f"{name}: {spec.height}x{spec.width}, {spec.steps} steps, {spec.dtype}, batch {spec.batch_size}")
    lines.insert(0, f"{name}: naive loop {naive_rate:.1f} img/s{counted}")
    by_label = {v.label: v for v in variants}
    previous = statistics.median(by_label["previous"].rates) if "previous" in by_label else None
    for v in variants:
        rate = statistics.median(v.rates)
        line = f"{name} [{v.label}]: {rate:.1f} img/s, {rate / naive_rate:.2f}x naive"
        line += f", {rate / previous:.2f}x previous" if previous else ""
        line += f", {100 * rate * flops / peak:.1f}% of the bf16 matmul rate" if peak and flops else ""
        line += f"; first shard {v.first_s:.1f} s; {diff_line(v.images, plain)}"
        if v.worker.renderer.rows_per_call != spec.batch_size:  # they share the GPU: one may have run short
            line += f"; NOT COMPARABLE: batch halved to {v.worker.renderer.rows_per_call} after out-of-memory"
        lines.append(line)
    chosen = max(variants, key=lambda v: statistics.median(v.rates))  # the fastest: its time, in detail
    lines += profile_lines(name, chosen, data, rows, args, per_part)
    for v in variants:
        v.worker.pool.shutdown()
    return lines


def profile_lines(
    name: str, v: Variant, data: Path, rows: int, args: argparse.Namespace, flops: dict[str, float]
) -> list[str]:
    """Where the chosen worker's time goes: per component (hooked shard), device-time profile,
    and with --trace a torch.profiler table of one more shard."""
    device = v.worker.spec.device
    timed = summed_timings(v.markers)
    with component_times(v.worker.renderer.pipe, cuda=device == "cuda") as totals:
        rate = run_shard(v, data, rows)
    lines = [
        f"{name} [{v.label}] time per component (hooked shard; % of wall time): "
        f"{breakdown_line(totals, rows, rows / rate, flops)}",
        f"{name} [{v.label}] profile (share of device time in the timed runs): "
        f"{profile_line({**timed, 'device_idle_before': 0.0})}",
    ]
    if args.trace:
        path = args.trace / f"profile-{name.replace('/', '-').replace(' ', '-')}.txt"
        trace_shard(v, data, rows, path)
        lines.append(f"{name} [{v.label}] torch.profiler table of one shard: {path}")
    return lines


def trace_shard(v: Variant, data: Path, rows: int, path: Path) -> None:
    """One more shard under torch.profiler, every thread (pipeline calls run on the device thread;
    profile_all_threads: torch >= 2.7): the ops that took the most device time (CPU time on CPU)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = v.worker.spec.device == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    every_thread = torch._C._profiler._ExperimentalConfig(profile_all_threads=True)
    with profile(activities=activities, experimental_config=every_thread) as prof:
        run_shard(v, data, rows)
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=60))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["stabilityai/sd-turbo", "stabilityai/sdxl-turbo"])
    parser.add_argument("--decoders", default="vae,tiny", help="vae (the model's), tiny (TAESD architecture), or both")
    parser.add_argument("--images", type=int, default=128, help="rows per shard (one shard per timed run)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--variants",
        default=",".join(STANDARD),
        metavar="LABEL[,LABEL...]",
        help=f"workers to time: {', '.join(STANDARD)}, or any --speedups list written with '+' "
        "(e.g. fold_upsample+fused_norms); compile_decoder compiles for minutes",
    )
    parser.add_argument("--trace", type=Path, metavar="DIR", help="also a torch.profiler table of one shard")
    parser.add_argument("--smoke", action="store_true", help="CPU + tiny model: exercise the code, measure nothing")
    args = parser.parse_args(argv)
    args.changes = {}
    for label in dict.fromkeys(v.strip() for v in args.variants.split(",") if v.strip()):
        try:
            args.changes[label] = STANDARD.get(label) or normalize_speedups(label.replace("+", ","))
        except Exception as e:  # noqa: BLE001 - JobError: names the valid changes
            parser.error(f"--variants: {e}")
    args.variants = list(args.changes)
    args.decoders = [d.strip() for d in args.decoders.split(",") if d.strip()]
    if not set(args.decoders) <= {"vae", "tiny"}:
        parser.error(f"--decoders: {args.decoders} is not valid; choose from vae, tiny")
    if args.smoke:
        # tiny twins named with --models are smoked as given; any other model by tiny-sd-turbo
        twins = [m if m.startswith("tiny-") else "tiny-sd-turbo" for m in args.models]
        args.models, args.images, args.batch_size, args.runs = list(dict.fromkeys(twins)), 8, 4, 1
    elif not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs CUDA (use --smoke to check the code path on CPU)")
    return args


def main() -> None:
    args = parse_args()
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # the naive SDXL loop warns twice per call (VAE upcast)
    peak = None if args.smoke else matmul_rate()
    card = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name()
    measured = f"; bf16 matmul {peak / 1e12:.0f} TFLOP/s measured" if peak else ""
    print(f"card: {card}; torch {torch.__version__}{measured}", flush=True)
    for model in args.models:
        for decoder in args.decoders:
            with tempfile.TemporaryDirectory(prefix="tb-gpu-") as tmp:
                print("\n".join(bench(model, decoder, args, Path(tmp), peak)), flush=True)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
