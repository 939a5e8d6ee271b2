"""The worker's speed changes, one function each, applied to a loaded pipeline by ``--speedups``.

Each is switchable and timed alone and together, side by side, by ``benchmarks/gpu.py``
(results in docs/BENCHMARKS.md); the default set (spec/job.py ``DEFAULT_SPEEDUPS``) is what
measured faster without changing images beyond 1 level of 255. ``overlap`` is the renderer's
(two batches in flight, workers/batches.py), not a change to the pipeline.

Outside ``--speedups``: ``compile_unet`` is ``--compile MODE`` (opt-in: it compiles for tens of
seconds per worker), and ``tiny_vae`` is what ``--vae madebyollin/taesd`` does, with random
weights, for benchmarks (it changes images by design). Measured earlier on an H200 and not kept:
channels_last on the whole pipeline without NHWC GroupNorm kernels (0.79x), fused QKV
projections (within noise), CUDA graphs of the compiled UNet (no gain over ``compile_unet``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from turbobatch.workers.speedups import decoder_ops, norm_fusion, transformer_fusion


def fold_upsample(pipe: Any) -> None:
    """Nearest 2x upsample + 3x3 convolution in the decoder as one transposed convolution with
    folded weights: the same function with 16 instead of 36 multiply-adds per low-resolution pixel
    and no interpolate pass (workers/speedups/decoder_ops.py)."""
    decoder_ops.fold_upsamplers(pipe.vae)


def fused_norms(pipe: Any) -> None:
    """The decoder's GroupNorm -> SiLU pairs as one pass of the project's PyCUDA kernel (and its
    plain GroupNorms as the kernel without SiLU); on CPU the torch reference runs the same ops."""
    norm_fusion.fuse_group_norms(pipe.vae)


def unet_fused_norms(pipe: Any) -> None:
    """The same kernel in the UNet (workers/speedups/norm_fusion.py): its resnets' GroupNorm -> SiLU pairs,
    its transformers' input GroupNorms and its output norm. The UNet is 16-24% of a batch's time
    on an H200 and the VAE 49-62% (docs/BENCHMARKS.md), so this is timed on its own."""
    norm_fusion.fuse_unet_group_norms(pipe.unet)


def transformer_fused_norms(pipe: Any) -> None:
    """Z-Image's and FLUX.2's transformer blocks: each norm + ``(1 + scale) * x + shift`` modulation,
    with the gated residual before it, as one pass of the project's kernel (kernels/adanorm.cu;
    workers/speedups/transformer_fusion.py). Nothing for a pipeline without a transformer (sd-turbo,
    sdxl-turbo). ``fused_norms`` puts the GroupNorm kernel in these families' VAE decoders, as in SD's."""
    transformer_fusion.fuse_transformer_norms(pipe)


def channels_last(pipe: Any) -> None:
    """The VAE in NHWC memory format, which cuDNN's fastest half-precision convolutions use; pays
    only with ``fused_norms`` (torch's GroupNorm has no NHWC kernel and converts around it)."""
    decoder_ops.to_channels_last(pipe.vae)


def cudnn_benchmark(pipe: Any) -> None:
    """cuDNN times its convolution algorithms for each new shape once, instead of picking by
    heuristics: fixed shapes (a job's batch and size) pay seconds once per worker. Process-wide."""
    torch.backends.cudnn.benchmark = True


def compile_decoder(pipe: Any) -> None:
    """``torch.compile`` the VAE's decoder (inductor fuses its norms and activations into the
    convolutions' neighbours); compiles on the first batch of each shape, for tens of seconds."""
    pipe.vae.decoder.compile()


def overlap(pipe: Any) -> None:
    """The renderer's: the next batch is queued while the device finishes the current one."""


PIPELINE_CHANGES: dict[str, Callable[[Any], None]] = {
    "overlap": overlap,
    "fold_upsample": fold_upsample,
    "fused_norms": fused_norms,
    "unet_fused_norms": unet_fused_norms,
    "transformer_fused_norms": transformer_fused_norms,
    "channels_last": channels_last,
    "cudnn_benchmark": cudnn_benchmark,
    "compile_decoder": compile_decoder,
}
COMPILING = frozenset({"compile_decoder"})  # first use costs tens of seconds (benchmarks warm them up)


def apply(pipe: Any, names: Iterable[str]) -> None:
    """Apply the named changes (of spec/job.py SPEEDUPS) to ``pipe`` in place, in that order."""
    chosen = set(names)
    unknown = chosen - set(PIPELINE_CHANGES)
    if unknown:
        raise ValueError(f"unknown speedup(s) {sorted(unknown)}; valid: {', '.join(PIPELINE_CHANGES)}")
    for name, change in PIPELINE_CHANGES.items():
        if name in chosen:
            change(pipe)


def compile_unet(pipe: Any, mode: str = "default") -> None:
    """``--compile MODE``: ``torch.compile`` the UNet in place (``nn.Module.compile``: the module
    keeps its class and config). Inductor fuses its elementwise ops; ``reduce-overhead`` adds CUDA
    graphs. The first call of each input shape compiles (tens of seconds to minutes)."""
    pipe.unet.compile(mode=mode)


def tiny_vae(pipe: Any) -> None:
    """Benchmarks only: decode with a TAESD-architecture AutoencoderTiny with random weights, the
    cost of ``--vae madebyollin/taesd`` (about 1/18 of the VAE's decode FLOPs) without a download.
    Changes the images by design."""
    from turbobatch.models.random_weights import tiny_autoencoder

    vae = tiny_autoencoder(pipe.vae.config.latent_channels, pipe.vae_scale_factor)
    pipe.register_modules(vae=vae.to(pipe.vae.device, pipe.vae.dtype))
