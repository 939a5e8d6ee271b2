"""Candidate speed changes for a loaded diffusers pipeline (issue 8, part 4), one function each.

Each takes the pipeline a ``RenderWorker`` holds (``worker.renderer.pipe``), changes it in place
and returns nothing. ``benchmarks/gpu.py --variants`` measures them side by side against the
unchanged worker; only a change that measurably helps on a GPU, without changing images beyond
numeric noise, should become part of the worker. Of them, only ``compile_unet`` is reachable by
users, as the opt-in ``--compile MODE`` (its cost, compiling, pays off only on long jobs). A
change may alter low bits of the output (other kernels, other summation order). Measured on an
H200 (docs/BENCHMARKS.md, "Worker speed variants"): channels_last 0.79x, fuse_qkv within noise,
compile_unet 1.05-1.08x after 44-72 s of compiling, cuda_graphs no better than compile_unet.

``tiny_vae`` is different in kind: it changes pixels by design (a cheaper decoder, not the same
computation done faster). Users get it as ``--vae madebyollin/taesd``; here it is timed with
random weights of the same architecture, since no machine of ours can download the real ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def _parts(pipe: Any, names: tuple[str, ...]) -> list[torch.nn.Module]:
    """The pipeline's components among ``names`` that exist (a ControlNet only in ControlNet pipelines)."""
    return [part for name in names if isinstance(part := getattr(pipe, name, None), torch.nn.Module)]


def channels_last(pipe: Any) -> None:
    """Store the UNet, VAE (and ControlNet) weights as ``torch.channels_last`` (NHWC).

    Why it may help: cuDNN's fastest fp16/bf16 convolution kernels on tensor cores work in NHWC;
    with NCHW weights each convolution may pay layout transposes around the kernel. The VAE
    decode, mostly convolutions at full resolution, is the larger part of a 1-step image.
    Inputs stay NCHW-contiguous: a convolution with channels_last weights returns channels_last
    activations and the layout propagates from there.
    """
    for part in _parts(pipe, ("unet", "vae", "controlnet")):
        part.to(memory_format=torch.channels_last)


def fuse_qkv(pipe: Any) -> None:
    """Fuse each attention's query/key/value projections into one matrix multiply (diffusers 0.42).

    ``pipe.fuse_qkv_projections()`` (StableDiffusionMixin: SD and SDXL pipelines, with or without
    ControlNet) concatenates to_q/to_k/to_v (self-attention) or to_k/to_v (cross-attention) of
    every UNet and VAE ``Attention`` into ``to_qkv`` / ``to_kv`` and sets ``FusedAttnProcessor2_0``,
    which runs one larger GEMM and splits it, then SDPA. Why it may help: fewer, larger GEMMs and
    kernel launches. The ControlNet, if any, is left unfused. The original projections are kept,
    so weights in attention cost about twice their memory. Experimental in diffusers.
    """
    if not hasattr(pipe, "fuse_qkv_projections"):
        raise ValueError(f"{type(pipe).__name__} has no fuse_qkv_projections()")
    pipe.fuse_qkv_projections(unet=True, vae=True)  # raises ValueError for a VAE that is not AutoencoderKL


def sdpa(pipe: Any) -> None:
    """Set ``AttnProcessor2_0`` (torch ``scaled_dot_product_attention``) on every attention of
    the UNet, VAE (and ControlNet).

    Honestly a control, not a speed-up: with torch 2.x, diffusers 0.42's ``Attention`` already
    picks ``AttnProcessor2_0`` by default (checked on the tiny SD and SDXL twins: every UNet and
    VAE attention has it), so this changes nothing for the models we load. It would matter only
    for a checkpoint or code path that set the classic ``AttnProcessor`` (explicit softmax(QK^T)V,
    which materialises the attention matrix). Measured next to the baseline, its ratio shows the
    run-to-run noise of the benchmark.
    """
    from diffusers.models.attention_processor import AttnProcessor2_0

    for part in _parts(pipe, ("unet", "vae", "controlnet")):
        part.set_attn_processor(AttnProcessor2_0())


def compile_unet(pipe: Any, mode: str = "default") -> None:
    """``torch.compile`` the UNet in place (``nn.Module.compile``: the module keeps its class and
    config, so the pipeline uses it unchanged).

    Why it may help: inductor fuses the UNet's elementwise ops (norms, activations, residual adds)
    into fewer kernels; ``mode="max-autotune"`` also picks GEMM/convolution configurations by
    timing them. The cost is on the first call: compilation takes tens of seconds to minutes
    (more with autotuning), and a new input shape (a smaller last batch, an OOM-halved batch)
    compiles again. ``mode="reduce-overhead"`` adds CUDA graphs (fixed shapes only).
    """
    pipe.unet.compile(mode=mode)


def cuda_graphs(pipe: Any) -> None:
    """``compile_unet`` with ``mode="reduce-overhead"``: inductor's kernels replayed as CUDA graphs.

    Why it may help: at one step and batch 8 the UNet launches thousands of small kernels; a
    graph replays them with one launch. Costs what compile_unet costs, plus a graph per input
    shape (a smaller last batch is a new one). On CPU it is compile_unet.
    """
    compile_unet(pipe, mode="reduce-overhead")


def tiny_vae(pipe: Any) -> None:
    """Decode with a tiny autoencoder (TAESD architecture, random weights) instead of the VAE.

    Why it helps: the full VAE decode is about 2.5 of the 3.4 TFLOP of a 1-step sd-turbo image at
    512x512; TAESD's decoder is a small fraction of that (benchmarks/flops.py). Unlike the others
    this changes the images by design; with real weights (``--vae madebyollin/taesd``) they are
    slightly softer, so its pixel difference from the baseline says nothing here.
    """
    from workers.random_weights import tiny_autoencoder

    vae = tiny_autoencoder(pipe.vae.config.latent_channels, pipe.vae_scale_factor)
    pipe.register_modules(vae=vae.to(pipe.vae.device, pipe.vae.dtype))


# Changes that compile on first use (minutes): benchmark them in a call of their own.
COMPILING = frozenset({"compile_unet", "cuda_graphs"})
# Changes whose images differ by design, not by numeric noise.
CHANGES_PIXELS = frozenset({"tiny_vae"})

SPEEDUPS: dict[str, Callable[[Any], None]] = {
    "channels_last": channels_last,
    "fuse_qkv": fuse_qkv,
    "sdpa": sdpa,
    "compile_unet": compile_unet,
    "cuda_graphs": cuda_graphs,
    "tiny_vae": tiny_vae,
}


def get(name: str) -> Callable[[Any], None]:
    """The speed change called ``name``; ValueError naming the valid ones otherwise."""
    if name not in SPEEDUPS:
        raise ValueError(f"unknown speedup {name!r}; valid: {', '.join(SPEEDUPS)}")
    return SPEEDUPS[name]


def apply(pipe: Any, name: str) -> None:
    """Apply the speed change called ``name`` to ``pipe`` in place."""
    get(name)(pipe)
