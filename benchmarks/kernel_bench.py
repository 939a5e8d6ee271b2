"""Kernel vs torch reference vs diffusers' post-process path, in ms per batch (never asserted).

Run from the repository root: ``python -m benchmarks.kernel_bench`` (``make gpu-check`` does, on a
GPU). On CUDA each number is the median of --runs timed with CUDA events after warm-up; on
CPU (no GPU) only the reference paths run, timed with perf_counter, as a smoke test.
The diffusers path is ``VaeImageProcessor.postprocess(output_type="np")`` then
``(x * 255).round().astype(uint8)``; where diffusers is not installed (the lent GPU machine) an
inline copy of those exact steps runs and the table says so.
GroupNorm rows: the group_norm and fused group_norm + SiLU kernels (NCHW and channels_last) against
torch doing the same work, ``F.group_norm`` then ``F.silu``, on an NCHW tensor and on a
channels_last one (what a channels_last VAE runs today: torch's CUDA GroupNorm converts it), at the
SD VAE decoder's and sd-turbo UNet's GroupNorm shapes for --batch images of --size (32 groups); on
CPU a smoke size.
DiT rows (GPU only; on CPU a line says they are skipped): kernels/adanorm.cu's norm + modulation
(+ gated residual) in each form the Z-Image and FLUX.2 klein blocks use, at their real shapes for
--dit-batch images of 1024x1024 in bfloat16 (Z-Image: 3840 channels over 4096 image tokens plus
--caption-tokens; FLUX.2 klein 4B: 3072 channels, 4096 image tokens, and the same plus the text
tokens in its single-stream blocks), against torch running the same reference eagerly and against
``torch.compile`` of that reference (inductor fuses it too: the bar a hand-written kernel must pass).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from turbobatch import kernels
from turbobatch.kernels import reference


def diffusers_path() -> tuple[str, Callable[[torch.Tensor], np.ndarray]]:
    try:
        from diffusers.image_processor import VaeImageProcessor
    except ImportError:

        def inline(x: torch.Tensor) -> np.ndarray:  # VaeImageProcessor.postprocess(output_type="np"), inlined
            images = (x / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
            return (images * 255).round().astype(np.uint8)

        return "diffusers np path (inline copy; diffusers not installed)", inline
    processor = VaeImageProcessor()
    return (
        "diffusers VaeImageProcessor.postprocess + round",
        lambda x: (processor.postprocess(x, output_type="np") * 255).round().astype(np.uint8),
    )


def time_ms(fn: Callable[[], object], runs: int, warmup: int, cuda: bool) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


Case = tuple[str, Callable[[], object], str | None]  # name, timed call, the case it is compared with


def cases(x: torch.Tensor, cuda: bool) -> list[Case]:
    """Each kernel is compared with the torch reference doing the same work (the fused kernel with
    both reference passes; the copies with the reference's own copy)."""
    u8 = reference.postprocess_uint8(x)
    label, diffusers_fn = diffusers_path()
    post, both, dhash, canny = (
        "postprocess_uint8 torch reference",
        "postprocess_uint8 + image_stats torch reference",
        "dhash64 torch reference",
        "canny torch reference (100, 200)",
    )
    out: list[Case] = []
    if cuda:
        pinned = torch.empty(u8.shape, dtype=torch.uint8, pin_memory=True)  # what the worker copies into
        out += [
            ("postprocess_uint8 kernel", lambda: kernels.postprocess_uint8(x, backend="cuda"), post),
            (
                "postprocess_uint8 kernel + .cpu() (pageable)",
                lambda: kernels.postprocess_uint8(x, backend="cuda").cpu(),
                post + " + .cpu()",
            ),
            (
                "postprocess_uint8 kernel + copy to pinned memory (the worker's)",
                lambda: pinned.copy_(kernels.postprocess_uint8(x, backend="cuda"), non_blocking=True),
                post + " + .cpu()",
            ),
            (
                "postprocess + image_stats kernel (fused)",
                lambda: kernels.postprocess_with_stats(x, backend="cuda"),
                both,
            ),
        ]
    out += [
        (post, lambda: reference.postprocess_uint8(x), None),
        (post + " + .cpu()", lambda: reference.postprocess_uint8(x).cpu(), None),
        ("image_stats torch reference (2 passes)", lambda: reference.image_stats(x), None),
        (both, lambda: (reference.postprocess_uint8(x), reference.image_stats(x)), None),
        (label, lambda: diffusers_fn(x), post),
    ]
    if cuda:
        out += [
            ("dhash64 kernel", lambda: kernels.dhash64(u8, backend="cuda"), dhash),
            ("canny kernel (100, 200)", lambda: kernels.canny(u8, 100, 200, backend="cuda"), canny),
        ]
    out += [(dhash, lambda: reference.dhash64(u8), None), (canny, lambda: reference.canny(u8, 100, 200), None)]
    return out


def decoder_norm_shapes(batch: int, size: int) -> list[tuple[int, int, int, int]]:
    """The VAE decoder's GroupNorm inputs for `batch` images of size x size (latent = size / 8)."""
    return [
        (batch, 512, size // 8, size // 8),
        (batch, 512, size // 4, size // 4),
        (batch, 256, size // 2, size // 2),
        (batch, 128, size, size),
    ]


def unet_norm_shapes(batch: int, size: int) -> list[tuple[int, int, int, int]]:
    """sd-turbo's UNet GroupNorm inputs (block widths 320, 640, 1280, 1280 at latent / 1, 2, 4, 8),
    for ``--speedups unet_fused_norms``."""
    latent = size // 8
    return [
        (batch, 320, latent, latent),
        (batch, 640, latent // 2, latent // 2),
        (batch, 1280, latent // 4, latent // 4),
        (batch, 1280, latent // 8, latent // 8),
    ]


def group_norm_cases(shape: tuple[int, int, int, int], dtype: torch.dtype, device: str, cuda: bool) -> list[Case]:
    """Kernel (NCHW and channels_last, plain and fused with SiLU) vs torch's ops on the same tensor."""
    g = torch.Generator(device).manual_seed(1)
    x = torch.randn(shape, generator=g, device=device).to(dtype)
    w = (torch.rand(shape[1], generator=g, device=device) + 0.5).to(dtype)
    b = (torch.randn(shape[1], generator=g, device=device) * 0.1).to(dtype)
    x_cl = x.to(memory_format=torch.channels_last)
    tag = "x".join(map(str, shape))
    out: list[Case] = []
    for layout, t in (("NCHW", x), ("channels_last", x_cl)):
        plain, fused = f"F.group_norm {layout} {tag}", f"F.silu(F.group_norm) {layout} {tag}"
        if cuda:
            out += [
                (
                    f"group_norm kernel {layout} {tag}",
                    lambda t=t: kernels.group_norm(t, 32, w, b, 1e-6, backend="cuda"),
                    plain,
                ),
                (
                    f"group_norm + silu kernel (fused) {layout} {tag}",
                    lambda t=t: kernels.group_norm(t, 32, w, b, 1e-6, silu=True, backend="cuda"),
                    fused,
                ),
            ]
        out += [
            (plain, lambda t=t: F.group_norm(t, 32, w, b, 1e-6), None),
            (fused, lambda t=t: F.silu(F.group_norm(t, 32, w, b, 1e-6)), None),
        ]
    return out


def dit_cases(batch: int, caption: int, compile_ref: bool, device: str = "cuda") -> list[Case]:
    """Each adanorm form at the real shapes: torch eager (the reference), torch.compile of the same
    reference (compared with eager), and the kernel (compared with the compiled reference)."""
    g = torch.Generator(device).manual_seed(2)
    dt = torch.bfloat16
    image = (1024 // 16) ** 2  # 1024x1024: latent 128x128, 2x2 patches (Z-Image) / packing (FLUX.2): 4096

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, device=device) * scale).to(dt)

    out: list[Case] = []
    forms = []
    for model, d, tokens_list in (
        ("z-image", 3840, [image + caption]),
        ("flux2-klein", 3072, [image, image + caption]),
    ):
        w, w2 = rand(d, scale=0.1) + 1, rand(d, scale=0.1) + 1
        mod = rand(batch, 6 * d, scale=0.5).unsqueeze(1)  # chunks: strided [B, 1, D] views, no copy
        shift, scale, gate, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
        for tokens in tokens_list:
            x, y = rand(batch, tokens, d, scale=2), rand(batch, tokens, d, scale=3)
            tag = f"{model} {batch}x{tokens}x{d}"
            if model == "z-image":
                tg, tg2 = gate.tanh(), gate2.tanh()
                forms += [
                    (f"{tag} rms_norm * (1 + scale)", reference.modulated_norm, (x, "rms", w, 1e-5, scale), {}),
                    (
                        f"{tag} x + gate * rms_norm(y), rms_norm * (1 + scale)",
                        reference.gated_residual,
                        (x, y, tg),
                        dict(y_norm=True, y_weight=w2, y_eps=1e-5, norm="rms", weight=w, eps=1e-5, scale=scale2),
                    ),
                    (
                        f"{tag} x + gate * rms_norm(y)",
                        reference.gated_residual,
                        (x, y, tg2),
                        dict(y_norm=True, y_weight=w2, y_eps=1e-5),
                    ),
                ]
            elif tokens == image:  # double-stream image stream
                forms += [
                    (
                        f"{tag} (1 + scale) * layer_norm + shift",
                        reference.modulated_norm,
                        (x, "layer", None, 1e-6, scale, shift),
                        {},
                    ),
                    (
                        f"{tag} x + gate * y, (1 + scale) * layer_norm + shift",
                        reference.gated_residual,
                        (x, y, gate),
                        dict(norm="layer", eps=1e-6, scale=scale2, shift=shift2),
                    ),
                ]
            else:  # single-stream: text + image tokens
                forms += [
                    (
                        f"{tag} (1 + scale) * layer_norm + shift",
                        reference.modulated_norm,
                        (x, "layer", None, 1e-6, scale, shift),
                        {},
                    ),
                    (f"{tag} x + gate * y", reference.gated_residual, (x, y, gate), {}),
                ]
    kernel_of = {reference.modulated_norm: kernels.modulated_norm, reference.gated_residual: kernels.gated_residual}
    for name, ref_fn, args, kw in forms:
        eager = f"torch eager {name}"
        compiled_fn = torch.compile(ref_fn, dynamic=False) if compile_ref else None
        kernel_fn = kernel_of[ref_fn]
        out.append((eager, lambda f=ref_fn, a=args, k=kw: f(*a, **k), None))
        if compiled_fn is not None:
            out.append((f"torch.compile {name}", lambda f=compiled_fn, a=args, k=kw: f(*a, **k), eager))
        out.append(
            (
                f"adanorm kernel {name}",
                lambda f=kernel_fn, a=args, k=kw: f(*a, **k, backend="cuda"),
                f"torch.compile {name}" if compiled_fn is not None else eager,
            )
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument("--dit-batch", type=int, default=4, help="images per DiT case (1024x1024, bfloat16)")
    parser.add_argument("--caption-tokens", type=int, default=512, help="text tokens beside the 4096 image tokens")
    parser.add_argument("--no-compile", action="store_true", help="DiT rows: no torch.compile reference")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    g = torch.Generator(device).manual_seed(0)
    shape = (args.batch, 3, args.size, args.size)
    x = (torch.randn(shape, generator=g, device=device) * 0.6).to(getattr(torch, args.dtype))
    card = torch.cuda.get_device_name() if cuda else "CPU (no GPU)"
    runs = args.runs if cuda else max(3, args.runs // 10)
    lines = [
        f"### {card}, {datetime.date.today().isoformat()}",
        "",
        f"batch {args.batch}x3x{args.size}x{args.size} {args.dtype}; "
        f"backend {kernels.BACKEND} ({kernels.BACKEND_REASON}); torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}; median of {runs} runs ({'CUDA events' if cuda else 'perf_counter'}); "
        f"GroupNorm: 32 groups, {args.dtype}, shapes in the op names",
        "",
        "| op | ms / batch | compared with | speed-up |",
        "|---|---:|---|---:|",
    ]
    all_cases = cases(x, cuda)
    # GroupNorm at the decoder's and the UNet's shapes; on CPU (a smoke run) 1 image of size / 8
    batch, size = (args.batch, args.size) if cuda else (1, max(64, args.size // 8))
    norm_shapes = decoder_norm_shapes(batch, size) + unet_norm_shapes(batch, size)
    for shape in norm_shapes:
        all_cases += group_norm_cases(shape, getattr(torch, args.dtype), device, cuda)
    if cuda:
        all_cases += dit_cases(args.dit_batch, args.caption_tokens, not args.no_compile)
    else:
        lines.insert(-3, "DiT norm + modulation rows (kernels/adanorm.cu): skipped, no GPU (they time CUDA only)\n")
        print("benchmarks.kernel_bench: DiT norm + modulation (adanorm) rows skipped: no GPU", flush=True)
    timed = [(name, time_ms(fn, runs, max(args.warmup, 3), cuda), ref) for name, fn, ref in all_cases]
    ms_of = {name: ms for name, ms, _ in timed}
    for name, ms, ref in timed:
        lines.append(f"| {name} | {ms:.3f} | {ref} | {ms_of[ref] / ms:.2f}x |" if ref else f"| {name} | {ms:.3f} | | |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
