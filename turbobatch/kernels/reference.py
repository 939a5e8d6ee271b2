"""Torch reference ops: the semantics every kernel must match, and the CPU path.

``postprocess_uint8`` is bit-exact with diffusers' own post-processing; the others are
defined here (docstrings) and the CUDA kernels in kernels/*.cu follow them exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from turbobatch.kernels.stats import ImageStats


def postprocess_uint8(x: torch.Tensor) -> torch.Tensor:
    """VAE output (NCHW, [-1, 1], any float dtype) -> uint8 NHWC.

    Same arithmetic as ``VaeImageProcessor.postprocess(output_type="np")`` followed by
    ``(images * 255).round().astype("uint8")``: denormalize in the input dtype, then widen to
    float32, scale, round half to even. NaN becomes 0 (the uint8 cast of NaN is undefined).
    """
    if x.ndim != 4:
        raise ValueError(f"postprocess_uint8: expected NCHW, got shape {tuple(x.shape)}")
    images = (x / 2 + 0.5).clamp(0, 1)
    scaled = (images.permute(0, 2, 3, 1).float() * 255).round()
    return torch.nan_to_num(scaled, nan=0.0).to(torch.uint8)


def group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    silu: bool = False,
) -> torch.Tensor:
    """GroupNorm over [N, C, *spatial] (any memory format), then SiLU if ``silu``: exactly what
    diffusers' ``nn.GroupNorm`` followed by ``nn.SiLU`` computes (each rounds to x's dtype).

    The result keeps x's memory format (channels_last in, channels_last out), as torch's own op.
    """
    if x.ndim < 3:
        raise ValueError(f"group_norm: expected [N, C, *spatial], got shape {tuple(x.shape)}")
    if x.shape[1] % num_groups:
        raise ValueError(f"group_norm: {x.shape[1]} channels do not split into {num_groups} groups")
    out = F.group_norm(x, num_groups, weight, bias, eps)
    return F.silu(out) if silu else out


def image_stats(x: torch.Tensor, images: torch.Tensor | None = None) -> ImageStats:
    """NaN/inf counts of the float input; mean, population std, min, max of its uint8 image."""
    u8 = postprocess_uint8(x) if images is None else images
    flat_x = x.reshape(x.shape[0], -1)
    flat = u8.reshape(u8.shape[0], -1).double()
    if flat.shape[1] == 0:
        zero = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        return ImageStats(zero, zero, zero.double(), zero.double(), zero, zero)
    return ImageStats(
        nan=torch.isnan(flat_x).sum(dim=1),
        inf=torch.isinf(flat_x).sum(dim=1),
        mean=flat.mean(dim=1),
        std=flat.std(dim=1, unbiased=False),
        min=flat.amin(dim=1).long(),
        max=flat.amax(dim=1).long(),
    )


def _nhwc(images: torch.Tensor, op: str) -> torch.Tensor:
    if images.dtype != torch.uint8:
        raise TypeError(f"{op}: expected uint8 images, got {images.dtype}")
    if images.ndim == 3:
        images = images.unsqueeze(-1)
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{op}: expected NHWC with C in (1, 3, 4) or NHW, got {tuple(images.shape)}")
    return images


def gray(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> int32 [N, H, W]: (4899 R + 9617 G + 1868 B + 8192) >> 14.

    OpenCV's classic fixed-point BT.601 luma (cv2.cvtColor in OpenCV 4 differs by 1 on a few
    pixels). One channel passes through; a fourth (alpha) channel is ignored."""
    images = _nhwc(images, "gray").to(torch.int32)
    if images.shape[-1] == 1:
        return images[..., 0]
    r, g, b = images[..., 0], images[..., 1], images[..., 2]
    return (4899 * r + 9617 * g + 1868 * b + 8192) >> 14


def dhash64(images: torch.Tensor) -> torch.Tensor:
    """64-bit difference hash per image, as int64 [N] (the uint64 bit pattern).

    Definition: gray = OpenCV's integer RGB2GRAY (see ``gray``). Box-resize to 8 rows x 9
    columns: box (i, j) covers rows [i*H//8, (i+1)*H//8) and columns [j*W//9, (j+1)*W//9)
    and its value is the mean gray of those pixels. Bit i*8 + j (bit 0 = least significant)
    is 1 when mean(i, j) > mean(i, j+1), compared exactly in integers. Needs H >= 8, W >= 9.
    Near-duplicates differ in few bits: compare with ``hamming64``.
    """
    g = gray(images).long()
    n, h, w = g.shape
    if h < 8 or w < 9:
        raise ValueError(f"dhash64: images must be at least 8 rows x 9 columns, got {h}x{w}")
    # Box sums from an integral image (exact in int64): a few ops instead of 72 slices.
    integral = torch.nn.functional.pad(g.cumsum(1).cumsum(2), (1, 0, 1, 0))  # [N, H+1, W+1]
    # Box edges made on the device (a list copied from the host would synchronise a CUDA stream).
    rows = torch.arange(9, device=g.device) * h // 8
    cols = torch.arange(10, device=g.device) * w // 9
    corner = integral[:, rows][:, :, cols]  # [N, 9, 10]
    sums = corner[:, 1:, 1:] - corner[:, :-1, 1:] - corner[:, 1:, :-1] + corner[:, :-1, :-1]  # [N, 8, 9]
    counts = (rows[1:] - rows[:-1]).unsqueeze(1) * (cols[1:] - cols[:-1]).unsqueeze(0)  # [8, 9]
    bits = sums[:, :, :8] * counts[:, 1:] > sums[:, :, 1:] * counts[:, :8]  # [N, 8, 8]
    weights = torch.ones(64, dtype=torch.int64, device=g.device) << torch.arange(64, device=g.device)
    return (bits.reshape(n, 64).long() * weights).sum(dim=1)  # int64 wraps: the uint64 bits


def hamming64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Number of differing bits between int64 hashes (broadcasting)."""
    x = a ^ b
    bits = (x.unsqueeze(-1) >> torch.arange(64, device=x.device)) & 1
    return bits.sum(dim=-1)


def canny_thresholds(low: float, high: float) -> tuple[int, int]:
    """OpenCV's rule for the L1 gradient: swap if low > high, then floor both."""
    if low > high:
        low, high = high, low
    return math.floor(low), math.floor(high)


def canny(images: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Canny edges of uint8 images -> uint8 [N, H, W] in {0, 255}, OpenCV's algorithm.

    gray (``gray``), 3x3 Sobel with replicated border, L1 magnitude |dx| + |dy|, OpenCV's
    fixed-point non-maximum suppression (magnitude outside the image is 0), thresholds as
    ``cv2.Canny(gray, low, high)`` (swap if low > high, floor; weak: > low, strong: > high),
    and hysteresis: weak pixels 8-connected to a strong pixel become edges.
    """
    lo, hi = canny_thresholds(low, high)
    g = gray(images)
    n, h, w = g.shape
    if g.numel() == 0:
        return torch.zeros((n, h, w), dtype=torch.uint8, device=g.device)
    p = F.pad(g.unsqueeze(1).float(), (1, 1, 1, 1), mode="replicate").squeeze(1).long()
    a, b, c = p[:, :-2], p[:, 1:-1], p[:, 2:]  # rows y-1, y, y+1 (width w+2)
    dx = (a[..., 2:] + 2 * b[..., 2:] + c[..., 2:]) - (a[..., :-2] + 2 * b[..., :-2] + c[..., :-2])
    dy = (c[..., :-2] + 2 * c[..., 1:-1] + c[..., 2:]) - (a[..., :-2] + 2 * a[..., 1:-1] + a[..., 2:])
    mag = dx.abs() + dy.abs()
    m = F.pad(mag, (1, 1, 1, 1))  # zero outside the image

    def at(oy: int, ox: int) -> torch.Tensor:
        return m[:, 1 + oy : 1 + oy + h, 1 + ox : 1 + ox + w]

    ax, ay = dx.abs(), dy.abs()
    tg22x, yv = ax * 13573, ay << 15
    horizontal = yv < tg22x
    vertical = ~horizontal & (yv > tg22x + (ax << 16))
    diag_pos = (dx ^ dy) >= 0  # s = +1: up-left vs down-right
    keep_h = (mag > at(0, -1)) & (mag >= at(0, 1))
    keep_v = (mag > at(-1, 0)) & (mag >= at(1, 0))
    keep_d = torch.where(diag_pos, (mag > at(-1, -1)) & (mag > at(1, 1)), (mag > at(-1, 1)) & (mag > at(1, -1)))
    keep = torch.where(horizontal, keep_h, torch.where(vertical, keep_v, keep_d)) & (mag > lo)
    strong = keep & (mag > hi)
    weak = keep & ~strong
    while True:  # grow strong edges into 8-connected weak pixels until nothing changes
        grown = F.max_pool2d(strong.unsqueeze(1).float(), 3, stride=1, padding=1).squeeze(1) > 0
        nxt = strong | (weak & grown)
        if torch.equal(nxt, strong):
            break
        strong = nxt
    return strong.to(torch.uint8) * 255


# -- DiT blocks: norm + modulation (+ gated residual), kernels/adanorm.cu ------------------------
NORMS = ("rms", "layer")


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """diffusers' ``RMSNorm.forward`` (models/normalization.py, the non-NPU path), step for step:
    mean of squares in float32, ``x * rsqrt(.)`` (float32), rounded to the weight's dtype when it is
    float16/bfloat16, times the weight; without a weight, rounded back to x's dtype."""
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    h = x * torch.rsqrt(variance + eps)
    if weight is None:
        return h.to(x.dtype)
    if weight.dtype in (torch.float16, torch.bfloat16):
        h = h.to(weight.dtype)
    return h * weight


def _check_norm(norm: str | None, weight: torch.Tensor | None, op: str) -> None:
    if norm is not None and norm not in NORMS:
        raise ValueError(f"{op}: norm must be one of {NORMS} or None, got {norm!r}")
    if norm == "layer" and weight is not None:
        raise ValueError(f"{op}: norm='layer' is LayerNorm without affine (FLUX.2's); it takes no weight")


def modulated_norm(
    x: torch.Tensor,
    norm: str,
    weight: torch.Tensor | None,
    eps: float,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """``norm(x) * (1 + scale) + shift`` over the last dimension, as the DiT blocks write it:

    - norm ``"rms"``: diffusers' ``RMSNorm`` with ``weight`` (Z-Image's ``attention_norm1`` /
      ``ffn_norm1``; Z-Image has no shift: ``self.attention_norm1(x) * (1.0 + scale)``);
    - norm ``"layer"``: ``F.layer_norm`` without affine (FLUX.2's ``norm1`` / ``norm2`` / ``norm``:
      ``(1 + scale) * self.norm1(x) + shift``).

    scale and shift broadcast against x (``[B, 1, D]`` chunks of the modulation, or per token
    ``[B, S, D]``); each op rounds to the dtype as torch does (``1 + scale`` included)."""
    _check_norm(norm, weight, "modulated_norm")
    if norm is None:
        raise ValueError("modulated_norm: norm must be 'rms' or 'layer'")
    h = rms_norm(x, weight, eps) if norm == "rms" else F.layer_norm(x, (x.shape[-1],), None, None, eps)
    if scale is not None:
        h = h * (1 + scale)
    if shift is not None:
        h = h + shift
    return h


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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``x_new = x + gate * ynorm(y)`` and the next ``modulated_norm(x_new, norm, ...)``:

    - ``y_norm``: ``rms_norm(y, y_weight, y_eps)`` first (Z-Image: ``x + gate *
      self.attention_norm2(attn_out)``); else y as is (FLUX.2: ``x + gate * attn_output``);
    - gate None: ``x + ynorm(y)`` (Z-Image's unmodulated refiner blocks);
    - ``clip`` and float16: x_new clipped to +-65504 (FLUX.2's single blocks and text stream);
    - norm None: no second output (the block's last residual); else the normalised, modulated x_new.

    Returns ``(x_new, h or None)``."""
    _check_norm(norm, weight, "gated_residual")
    t = rms_norm(y, y_weight, y_eps) if y_norm else y
    if gate is not None:
        t = gate * t
    x_new = x + t
    if clip and x_new.dtype == torch.float16:
        x_new = x_new.clip(-65504, 65504)
    h = modulated_norm(x_new, norm, weight, eps, scale, shift) if norm is not None else None
    return x_new, h
