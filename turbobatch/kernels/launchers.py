"""Host side of every kernel op: check inputs, allocate outputs, pick grids, pack arguments.

The same code drives the PyCUDA launcher (kernels/runtime.py) on GPU tensors and the host
shim (tests/unit/kernels/shim.py) on CPU tensors, so the CPU tests cover it too. A `Launch` is
``launch(file, kernel, grid, block, args, device)`` with args as numpy scalars (pointers are
``np.uintp``), i.e. PyCUDA's calling convention.
"""

from __future__ import annotations

import math
import operator
from typing import Protocol

import numpy as np
import torch

from turbobatch.kernels import reference
from turbobatch.kernels.reference import canny_thresholds

TB_BLOCK = 256  # must equal TB_BLOCK in kernels/tb_common.cuh (a test checks)
TB_TILE = 16  # must equal TB_TILE in kernels/canny.cu
PIXELS_PER_THREAD = 4
MAX_BLOCKS_PER_IMAGE = 1024

_POSTPROCESS = {torch.float32: "postprocess_f32", torch.float16: "postprocess_f16", torch.bfloat16: "postprocess_bf16"}
_DTYPE_SUFFIX = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
# groupnorm.cu: elements one stats block reduces, and one apply block writes (tuned on a GPU later).
GN_STATS_ELEMS = 16384
GN_APPLY_ELEMS = 8192
GN_MAX_J = 8  # must equal TB_GN_MAXJ in kernels/groupnorm.cu: channels_last kernels take C <= GN_MAX_J * TB_BLOCK


class Launch(Protocol):
    def __call__(
        self,
        file: str,
        kernel: str,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        args: list[np.generic],
        device: torch.device,
    ) -> None: ...


def _ptr(t: torch.Tensor | None) -> np.uintp:
    return np.uintp(0 if t is None else t.data_ptr())


def _blocks(total: int) -> int:
    return max(1, min(65535, -(-total // (TB_BLOCK * PIXELS_PER_THREAD))))


def postprocess(x: torch.Tensor, launch: Launch, stats: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """NCHW float -> (uint8 NHWC, per-block stat partials [N, B, 6] int64 or None)."""
    if x.ndim != 4:
        raise ValueError(f"postprocess_uint8: expected NCHW, got shape {tuple(x.shape)}")
    if x.dtype not in _POSTPROCESS:
        raise TypeError(f"postprocess_uint8: dtype {x.dtype} not in {sorted(map(str, _POSTPROCESS))}")
    x = x.contiguous()
    n, c, h, w = x.shape
    out = torch.empty((n, h, w, c), dtype=torch.uint8, device=x.device)
    if x.numel() == 0:
        return out, (torch.zeros((n, 0, 6), dtype=torch.int64, device=x.device) if stats else None)
    per_image = max(1, min(MAX_BLOCKS_PER_IMAGE, -(-h * w // (TB_BLOCK * PIXELS_PER_THREAD))))
    partials = torch.empty((n, per_image, 6), dtype=torch.int64, device=x.device) if stats else None
    args = [_ptr(x), _ptr(out), _ptr(partials), np.int32(c), np.int32(h * w), np.int32(per_image)]
    launch("postprocess.cu", _POSTPROCESS[x.dtype], (per_image, n, 1), (TB_BLOCK, 1, 1), args, x.device)
    return out, partials


def _check_u8(images: torch.Tensor, op: str) -> torch.Tensor:
    """uint8 NHWC (C in 1, 3, 4) or NHW -> contiguous NHWC (same checks as the reference)."""
    return reference._nhwc(images, op).contiguous()


def dhash64(images: torch.Tensor, launch: Launch) -> torch.Tensor:
    """uint8 NHWC -> int64 [N] hashes (see reference.dhash64 for the definition)."""
    images = _check_u8(images, "dhash64")
    n, h, w, c = images.shape
    if h < 8 or w < 9:
        raise ValueError(f"dhash64: images must be at least 8 rows x 9 columns, got {h}x{w}")
    out = torch.empty(n, dtype=torch.int64, device=images.device)
    if n == 0:
        return out
    cells = torch.empty((n, 72), dtype=torch.int64, device=images.device)
    launch(
        "dhash.cu",
        "dhash_cells",
        (72, n, 1),
        (TB_BLOCK, 1, 1),
        [_ptr(images), _ptr(cells), np.int32(h), np.int32(w), np.int32(c)],
        images.device,
    )
    launch(
        "dhash.cu",
        "dhash_bits",
        (-(-n // TB_BLOCK), 1, 1),
        (TB_BLOCK, 1, 1),
        [_ptr(cells), _ptr(out), np.int32(h), np.int32(w), np.int32(n)],
        images.device,
    )
    return out


def canny(images: torch.Tensor, low: float, high: float, launch: Launch) -> torch.Tensor:
    """uint8 NHWC/NHW -> uint8 [N, H, W] edge map (0 or 255)."""
    images = _check_u8(images, "canny")
    lo, hi = canny_thresholds(low, high)
    n, h, w, c = images.shape
    total = n * h * w
    dev = images.device
    if total == 0:
        return torch.zeros((n, h, w), dtype=torch.uint8, device=dev)
    gray = torch.empty((n, h, w), dtype=torch.uint8, device=dev)
    mag = torch.empty((n, h, w), dtype=torch.int32, device=dev)
    edge_map = torch.empty((n, h, w), dtype=torch.uint8, device=dev)
    grid, block = (_blocks(total), 1, 1), (TB_BLOCK, 1, 1)
    launch("canny.cu", "gray_u8", grid, block, [_ptr(images), _ptr(gray), np.int64(total), np.int32(c)], dev)
    launch(
        "canny.cu", "sobel_mag", grid, block, [_ptr(gray), _ptr(mag), np.int32(h), np.int32(w), np.int64(total)], dev
    )
    launch(
        "canny.cu",
        "canny_classify",
        grid,
        block,
        [_ptr(gray), _ptr(mag), _ptr(edge_map), np.int32(h), np.int32(w), np.int64(total), np.int32(lo), np.int32(hi)],
        dev,
    )
    changed = torch.zeros(1, dtype=torch.int32, device=dev)
    tiles = (-(-w // TB_TILE), -(-h // TB_TILE), n)
    while True:  # each round grows strong edges by at least one tile; ends when nothing changed
        changed.zero_()
        launch(
            "canny.cu",
            "canny_hysteresis",
            tiles,
            (TB_TILE, TB_TILE, 1),
            [_ptr(edge_map), _ptr(changed), np.int32(h), np.int32(w)],
            dev,
        )
        if int(changed.item()) == 0:
            break
    return (edge_map == 2).to(torch.uint8) * 255


def _gn_param(p: torch.Tensor | None, name: str, x: torch.Tensor) -> torch.Tensor | None:
    if p is None:
        return None
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"group_norm: {name} must be a tensor or None, got {type(p).__name__}")
    if tuple(p.shape) != (x.shape[1],):
        raise ValueError(f"group_norm: {name} must have shape ({x.shape[1]},) (one per channel), got {tuple(p.shape)}")
    if p.dtype != x.dtype:
        raise TypeError(f"group_norm: {name} dtype {p.dtype} differs from the input's {x.dtype}")
    if p.device != x.device:
        raise ValueError(f"group_norm: {name} is on {p.device}, the input on {x.device}")
    return p.contiguous()


def group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    silu: bool,
    launch: Launch,
) -> torch.Tensor:
    """GroupNorm (+ SiLU) of [N, C, *spatial] in x's memory format; see kernels/groupnorm.cu.

    Contiguous -> the NCHW kernels; 4-D channels_last (or 5-D channels_last_3d) -> the NHWC
    kernels on the same memory; anything else is made contiguous first (NCHW out, as torch)."""
    if x.ndim < 3:
        raise ValueError(f"group_norm: expected [N, C, *spatial], got shape {tuple(x.shape)}")
    if x.dtype not in _DTYPE_SUFFIX:
        raise TypeError(f"group_norm: dtype {x.dtype} not in {sorted(map(str, _DTYPE_SUFFIX))}")
    groups = operator.index(num_groups)
    n, c = x.shape[0], x.shape[1]
    if groups < 1 or c % groups:
        raise ValueError(f"group_norm: {c} channels do not split into {num_groups} groups")
    w, b = _gn_param(weight, "weight", x), _gn_param(bias, "bias", x)
    s = math.prod(x.shape[2:])
    if n * (c // groups) * s == 1:  # as F.group_norm (torch's _verify_batch_size)
        raise ValueError(f"group_norm: one value per group, got shape {tuple(x.shape)} with {groups} groups")
    if c * s >= 2**31 or n > 65535 or c > 65535:
        raise ValueError(f"group_norm: shape {tuple(x.shape)} too large (C*spatial < 2^31, N and C <= 65535)")
    layout = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.ndim)
    if layout is None or x.is_contiguous() or not x.is_contiguous(memory_format=layout):
        layout = torch.contiguous_format
    nhwc = layout != torch.contiguous_format and c <= GN_MAX_J * TB_BLOCK
    if not nhwc:
        x = x.contiguous()
    out = torch.empty_like(x)  # same strides: NCHW or channels_last memory, as the kernels write
    if x.numel() == 0:
        return out.contiguous(memory_format=layout)
    dev, suffix, cg = x.device, _DTYPE_SUFFIX[x.dtype], c // groups
    block = (TB_BLOCK, 1, 1)
    if nhwc:
        per_step = max(1, TB_BLOCK // c)  # pixel rows per step of a block (kernels/groupnorm.cu)
        rows = per_step * max(1, -(-GN_STATS_ELEMS // (c * per_step)))
        chunks = -(-s // rows)
        partials = torch.empty((n, groups, chunks, 3), dtype=torch.float32, device=dev)
        launch(
            "groupnorm.cu",
            f"gn_stats_nhwc_{suffix}",
            (chunks, n, 1),
            block,
            [_ptr(x), _ptr(partials), np.int32(c), np.int32(s), np.int32(groups), np.int32(rows), np.int32(chunks)],
            dev,
        )
    else:
        group_len = cg * s
        chunk_len = max(TB_BLOCK, min(group_len, GN_STATS_ELEMS))
        chunks = -(-group_len // chunk_len)
        partials = torch.empty((n, groups, chunks, 3), dtype=torch.float32, device=dev)
        launch(
            "groupnorm.cu",
            f"gn_stats_nchw_{suffix}",
            (chunks, groups, n),
            block,
            [_ptr(x), _ptr(partials), np.int32(group_len), np.int32(chunk_len), np.int32(chunks)],
            dev,
        )
    stats = torch.empty((n, groups, 2), dtype=torch.float32, device=dev)
    launch(
        "groupnorm.cu",
        "gn_finalize",
        (n * groups, 1, 1),
        block,
        [_ptr(partials), _ptr(stats), np.int32(chunks), np.float32(eps)],
        dev,
    )
    if nhwc:
        rows = per_step * max(1, -(-GN_APPLY_ELEMS // (c * per_step)))
        launch(
            "groupnorm.cu",
            f"gn_apply_nhwc_{suffix}",
            (-(-s // rows), n, 1),
            block,
            [
                _ptr(x),
                _ptr(out),
                _ptr(w),
                _ptr(b),
                _ptr(stats),
                np.int32(c),
                np.int32(s),
                np.int32(groups),
                np.int32(rows),
                np.int32(bool(silu)),
            ],
            dev,
        )
    else:
        span = max(TB_BLOCK, min(s, GN_APPLY_ELEMS))
        launch(
            "groupnorm.cu",
            f"gn_apply_nchw_{suffix}",
            (-(-s // span), c, n),
            block,
            [
                _ptr(x),
                _ptr(out),
                _ptr(w),
                _ptr(b),
                _ptr(stats),
                np.int32(s),
                np.int32(groups),
                np.int32(span),
                np.int32(bool(silu)),
            ],
            dev,
        )
    return out.contiguous(memory_format=layout)  # a no-op but where C > GN_MAX_J * TB_BLOCK ran as NCHW
