"""Public ops with backend choice: the PyCUDA kernel on CUDA tensors when usable, else the reference.

``backend="auto"`` takes the kernel for CUDA tensors when pycuda works here and the torch
reference otherwise (CPU tensors, no pycuda, no libcuda); ``"cuda"`` insists on the kernel
(error if unusable); ``"reference"`` always runs kernels/reference.py.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch

from turbobatch.kernels import launchers, reference, runtime
from turbobatch.kernels.stats import ImageStats, from_partials

Backend = Literal["auto", "cuda", "reference"]


@functools.lru_cache(maxsize=1)
def cuda_status() -> tuple[bool, str]:
    """(usable, reason), probed once per process."""
    return runtime.probe()


def _use_kernel(t: torch.Tensor, backend: Backend) -> bool:
    if backend == "reference":
        return False
    if backend not in ("auto", "cuda"):
        raise ValueError(f"backend must be 'auto', 'cuda' or 'reference', got {backend!r}")
    ok, why = cuda_status()
    if backend == "cuda":
        if not t.is_cuda:
            raise ValueError(f"backend='cuda' needs a CUDA tensor, got one on {t.device}")
        if not ok:
            raise RuntimeError(f"backend='cuda' but the PyCUDA kernels are unusable: {why}")
        return True
    return t.is_cuda and ok


def postprocess_uint8(x: torch.Tensor, *, backend: Backend = "auto") -> torch.Tensor:
    """VAE output NCHW float16/bfloat16/float32 in [-1, 1] -> uint8 NHWC, bit-exact with diffusers."""
    if _use_kernel(x, backend):
        return launchers.postprocess(x, runtime.launcher(), stats=False)[0]
    return reference.postprocess_uint8(x)


def postprocess_with_stats(x: torch.Tensor, *, backend: Backend = "auto") -> tuple[torch.Tensor, ImageStats]:
    """``postprocess_uint8`` and ``image_stats`` in one pass over the input."""
    if _use_kernel(x, backend):
        images, partials = launchers.postprocess(x, runtime.launcher(), stats=True)
        return images, from_partials(partials, images[0].numel() if len(images) else 0)
    images = reference.postprocess_uint8(x)
    return images, reference.image_stats(x, images)


def image_stats(x: torch.Tensor, *, backend: Backend = "auto") -> ImageStats:
    """Per image: NaN/inf counts of the input, mean/std/min/max of its uint8 image (see kernels.stats)."""
    return postprocess_with_stats(x, backend=backend)[1]


def group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-6,
    *,
    silu: bool = False,
    backend: Backend = "auto",
) -> torch.Tensor:
    """GroupNorm (+ SiLU when ``silu``) of [N, C, *spatial], NCHW or channels_last, in x's memory
    format; semantics in reference.group_norm, which the kernel (kernels/groupnorm.cu) follows within
    the tolerances stated in tests/unit/kernels/test_groupnorm_cu.py (float32 reduction order only)."""
    if _use_kernel(x, backend):
        return launchers.group_norm(x, num_groups, weight, bias, eps, silu, runtime.launcher())
    return reference.group_norm(x, num_groups, weight, bias, eps, silu)


def dhash64(images: torch.Tensor, *, backend: Backend = "auto") -> torch.Tensor:
    """64-bit difference hash per uint8 image as int64 [N]; definition in reference.dhash64."""
    if _use_kernel(images, backend):
        return launchers.dhash64(images, runtime.launcher())
    return reference.dhash64(images)


def canny(images: torch.Tensor, low: float = 100, high: float = 200, *, backend: Backend = "auto") -> torch.Tensor:
    """uint8 [N, H, W] edge map (0/255) of uint8 NHWC/NHW images, OpenCV's Canny (L1, aperture 3)."""
    if _use_kernel(images, backend):
        return launchers.canny(images, low, high, runtime.launcher())
    return reference.canny(images, low, high)


def _kernel_dtypes(x: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """adanorm.cu takes one dtype for every tensor; mixed ones (e.g. float32 norm weights kept by a
    model with bfloat16 activations) run the reference, which promotes as torch does."""
    return all(t is None or (t.dtype == x.dtype and t.device == x.device) for t in others)


def modulated_norm(
    x: torch.Tensor,
    norm: str,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    *,
    backend: Backend = "auto",
) -> torch.Tensor:
    """``norm(x) * (1 + scale) + shift`` over x's last dimension: RMSNorm with weight (Z-Image) or
    LayerNorm without affine (FLUX.2); semantics in reference.modulated_norm, which the kernel
    (kernels/adanorm.cu) follows within the bound stated in tests/unit/kernels/test_adanorm_cu.py."""
    if _use_kernel(x, backend) and (backend == "cuda" or _fits_adanorm(x, weight, scale, shift)):
        return launchers.adanorm(
            x, None, None, False, None, 0.0, False, norm, weight, eps, scale, shift, runtime.launcher()
        )[1]
    return reference.modulated_norm(x, norm, weight, eps, scale, shift)


def gated_residual(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None = None,
    *,
    y_norm: bool = False,
    y_weight: torch.Tensor | None = None,
    y_eps: float = 1e-5,
    clip: bool = False,
    norm: str | None = None,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``x_new = x + gate * ynorm(y)`` and, with a norm, ``modulated_norm(x_new, ...)`` in the same
    pass: (x_new, h or None). Semantics in reference.gated_residual; one kernel launch on CUDA."""
    if _use_kernel(x, backend) and (
        backend == "cuda" or _fits_adanorm(x, y, gate, y_weight if y_norm else None, weight, scale, shift)
    ):
        x_new, h = launchers.adanorm(
            x, y, gate, y_norm, y_weight, y_eps, clip, norm, weight, eps, scale, shift, runtime.launcher()
        )
        return x_new, h
    return reference.gated_residual(
        x,
        y,
        gate,
        y_norm=y_norm,
        y_weight=y_weight,
        y_eps=y_eps,
        clip=clip,
        norm=norm,
        weight=weight,
        eps=eps,
        scale=scale,
        shift=shift,
    )


def _fits_adanorm(x: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """What ``backend="auto"`` sends to the kernel: one dtype and device, and rows it takes."""
    return (
        x.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and x.ndim >= 2
        and 0 < x.shape[-1] <= launchers.AN_MAX_J * launchers.TB_BLOCK
        and _kernel_dtypes(x, *others)
    )
