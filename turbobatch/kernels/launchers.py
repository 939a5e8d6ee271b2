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


# adanorm.cu: channels per thread (TB_AN_MAXJ): rows of up to AN_MAX_J * TB_BLOCK channels.
AN_MAX_J = 16
_AN_NORM = {None: 0, "rms": 1, "layer": 2}


def _an_same(t: torch.Tensor | None, name: str, x: torch.Tensor, shape: tuple[int, ...] | None = None) -> None:
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"adanorm: {name} must be a tensor or None, got {type(t).__name__}")
    if t.dtype != x.dtype:
        raise TypeError(f"adanorm: {name} dtype {t.dtype} differs from x's {x.dtype}")
    if t.device != x.device:
        raise ValueError(f"adanorm: {name} is on {t.device}, x on {x.device}")
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"adanorm: {name} must have shape {shape}, got {tuple(t.shape)}")


def _an_mod_layout(m: torch.Tensor, lead: tuple[int, ...]) -> tuple[int, int] | None:
    """(row stride, rows per modulation row) when m (broadcast to lead + [D]) is a [M, D] view with
    unit channel stride whose row r // rows_per_mod serves row r of x; None if it is not."""
    if m.ndim > len(lead) + 1 or m.stride(-1) != 1:
        return None
    shape = (1,) * (len(lead) + 1 - m.ndim) + tuple(m.shape[:-1])
    strides = (0,) * (len(lead) + 1 - m.ndim) + tuple(m.stride()[:-1])
    k = len(lead)
    while k > 0 and shape[k - 1] == 1:
        k -= 1
    if shape[:k] != lead[:k]:
        return None  # broadcast inside the leading dims (e.g. one modulation for every image)
    for i in range(k - 1):
        if shape[i + 1] > 1 and strides[i] != strides[i + 1] * shape[i + 1]:
            return None
    return (strides[k - 1] if k else 0), math.prod(lead[k:])


def adanorm(
    x: torch.Tensor,
    y: torch.Tensor | None,
    gate: torch.Tensor | None,
    y_norm: bool,
    y_weight: torch.Tensor | None,
    y_eps: float,
    clip: bool,
    norm: str | None,
    weight: torch.Tensor | None,
    eps: float,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
    launch: Launch,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """kernels/adanorm.cu: (x_new or None without y, h or None without norm); reference.gated_residual
    and reference.modulated_norm give the semantics. x is [..., D] with D <= AN_MAX_J * TB_BLOCK; every
    tensor has x's dtype and device; gate/scale/shift broadcast against x."""
    if x.ndim < 2:
        raise ValueError(f"adanorm: expected x of shape [..., D], got {tuple(x.shape)}")
    if x.dtype not in _DTYPE_SUFFIX:
        raise TypeError(f"adanorm: dtype {x.dtype} not in {sorted(map(str, _DTYPE_SUFFIX))}")
    if norm not in _AN_NORM:
        raise ValueError(f"adanorm: norm must be 'rms', 'layer' or None, got {norm!r}")
    if norm == "layer" and weight is not None:
        raise ValueError("adanorm: norm='layer' is LayerNorm without affine; it takes no weight")
    if y is None and norm is None:
        raise ValueError("adanorm: nothing to compute (no y and no norm)")
    d = x.shape[-1]
    if d > AN_MAX_J * TB_BLOCK:
        raise ValueError(f"adanorm: rows of {d} channels; the kernel takes at most {AN_MAX_J * TB_BLOCK}")
    _an_same(y, "y", x, tuple(x.shape))
    for name, t in (("y_weight", y_weight), ("weight", weight)):
        _an_same(t, name, x, (d,))
    lead = tuple(x.shape[:-1])
    mods = {"gate": gate, "scale": scale, "shift": shift}
    layouts = {}
    for name, m in mods.items():
        _an_same(m, name, x)
        if m is not None:
            if m.shape[-1] != d:
                raise ValueError(f"adanorm: {name} must end in {d} channels, got {tuple(m.shape)}")
            torch.broadcast_shapes(m.shape, x.shape)  # raises on a shape that does not broadcast
            layouts[name] = _an_mod_layout(m, lead)
    if None in layouts.values() or len({rpm for _, rpm in layouts.values()}) > 1:
        # rare: broadcast across images, or mixed per-image / per-token modulation: one row each
        for name, m in mods.items():
            if m is not None:
                mods[name] = m.expand(x.shape).contiguous()
                layouts[name] = (d, 1)
    rows_per_mod = next(iter(layouts.values()))[1] if layouts else 1
    x = x.contiguous()
    y = None if y is None else y.contiguous()
    x_out = torch.empty_like(x) if y is not None else None
    h_out = torch.empty_like(x) if norm is not None else None
    rows = x.numel() // d if d else 0
    if rows == 0 or d == 0:
        return x_out, h_out

    def stride(name: str) -> np.int64:
        return np.int64(layouts[name][0] if name in layouts else 0)

    args = [
        _ptr(x),
        _ptr(y),
        _ptr(mods["gate"]),
        stride("gate"),
        _ptr(y_weight if y_norm else None),
        _ptr(weight),
        _ptr(mods["scale"]),
        stride("scale"),
        _ptr(mods["shift"]),
        stride("shift"),
        _ptr(x_out),
        _ptr(h_out),
        np.int32(d),
        np.int32(max(1, rows_per_mod)),
        np.float32(y_eps),
        np.float32(eps),
        np.int32(bool(y_norm and y is not None)),
        np.int32(_AN_NORM[norm]),
        np.int32(bool(clip)),
    ]
    launch("adanorm.cu", f"adanorm_{_DTYPE_SUFFIX[x.dtype]}", (rows, 1, 1), (TB_BLOCK, 1, 1), args, x.device)
    return x_out, h_out
