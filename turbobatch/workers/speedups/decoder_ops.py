"""Cheaper ways to run a loaded VAE decoder that compute the same function (only rounding moves).

Each rewrite is applied once to ``pipe.vae`` after loading, on its own or with the others, in any
order, and applying one again changes nothing. ``vae.decode(z, return_dict=False)[0]`` keeps
working as the pipeline calls it, on CPU and CUDA, in float32/float16/bfloat16 (see
shared/PERF-NOTES.md, "The VAE decoder", for why each may pay off on a GPU):

- ``fold_upsamplers``: nearest 2x upsample + 3x3 conv -> one 4x4 stride-2 transposed conv.
- ``to_channels_last``: NHWC weights and decoder input.

(GroupNorm + SiLU as one kernel pass, in the decoder and the UNet, is workers/speedups/norm_fusion.py.)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.upsampling import Upsample2D
from torch import nn


def _fold_matrix(device: torch.device) -> torch.Tensor:
    """M[k, d] = 1 where 3x3 tap d lands in 4x4 transposed-conv index k, per axis.

    Output o = 2i + a (phase a) of conv3x3(nearest2x(x)) reads upsampled row o + d - 1, i.e.
    source row i + s with s = floor((a + d - 1) / 2); the upsampled image's zero border is
    exactly x's (row -1 or H is out). conv_transpose2d(stride 2, padding 1) sends source j
    to o = 2j + k - 1, so k = a - 2s + 1: a=0 gets k=3 (d=0), k=1 (d=1, 2); a=1 gets k=2
    (d=0, 1), k=0 (d=2). Each k belongs to one phase, so the phases never mix.
    """
    m = torch.zeros(4, 3, dtype=torch.float64, device=device)
    for a in (0, 1):
        for d in (0, 1, 2):
            m[a - 2 * ((a + d - 1) // 2) + 1, d] = 1
    return m


class FoldedUpsampleConv(nn.Module):
    """``conv(F.interpolate(x, scale_factor=2, mode="nearest"))`` as one transposed conv: 16
    multiply-adds per input pixel and channel pair instead of 36, and no 4x-size intermediate."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        w = conv.weight.detach()
        m = _fold_matrix(w.device)
        folded = torch.einsum("kd,oide,le->iokl", m, w.double(), m)  # conv_transpose layout [in, out, 4, 4]
        nhwc = w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
        layout = torch.channels_last if nhwc else torch.contiguous_format
        self.weight = nn.Parameter(folded.to(w.dtype).contiguous(memory_format=layout), requires_grad=False)
        self.register_parameter("bias", conv.bias)  # shared with the original conv (or None)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels

    def forward(self, x: torch.Tensor, output_size: Any = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        # Upsample2D.forward's signature; its deprecated ``scale`` argument is ignored as it does.
        if output_size is not None and tuple(output_size) != (2 * x.shape[-2], 2 * x.shape[-1]):
            raise ValueError(f"FoldedUpsampleConv computes a 2x upsample only, not output_size={output_size}")
        return F.conv_transpose2d(x, self.weight, self.bias, stride=2, padding=1)


def _foldable_conv(conv: Any) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def _upsample2d_conv(m: Any) -> nn.Conv2d | None:
    """The conv of an Upsample2D whose forward is exactly nearest 2x then that conv, else None."""
    if not isinstance(m, Upsample2D) or type(m).forward is not Upsample2D.forward:
        return None
    if not m.use_conv or m.use_conv_transpose or not m.interpolate or m.norm is not None:
        return None
    conv = m.conv if m.name == "conv" else m.Conv2d_0
    return conv if _foldable_conv(conv) and conv.in_channels == m.channels else None


def _is_nearest_2x(m: Any) -> bool:
    if type(m) is not nn.Upsample or m.mode != "nearest" or m.size is not None:
        return False
    scale = m.scale_factor if isinstance(m.scale_factor, tuple) else (m.scale_factor, m.scale_factor)
    return tuple(float(s) for s in scale) == (2.0, 2.0)


def fold_upsamplers(module: nn.Module) -> int:
    """Replace every eligible upsampler under ``module`` (a VAE or its decoder) with a
    FoldedUpsampleConv: diffusers ``Upsample2D`` (AutoencoderKL), and ``nn.Upsample`` followed by a
    3x3 conv in an ``nn.Sequential`` (AutoencoderTiny: the conv becomes ``nn.Identity``).
    Anything configured otherwise is left alone. Returns how many were replaced."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if (conv := _upsample2d_conv(child)) is not None:
                setattr(parent, name, FoldedUpsampleConv(conv))
                count += 1
        if type(parent) is nn.Sequential:
            names = list(parent._modules)
            for up, nxt in zip(names, names[1:]):
                if _is_nearest_2x(parent._modules[up]) and _foldable_conv(parent._modules[nxt]):
                    parent._modules[up] = FoldedUpsampleConv(parent._modules[nxt])
                    parent._modules[nxt] = nn.Identity()
                    count += 1
    return count


def _nhwc_input(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return None


def to_channels_last(vae: nn.Module) -> None:
    """Decoder and ``post_quant_conv`` weights to ``torch.channels_last``, and a pre-hook that
    hands the decoder its input channels_last, so the whole decode runs NHWC (cuDNN's fast
    fp16/bf16 convolutions are NHWC; whether it pays is for a GPU to measure)."""
    for name in ("post_quant_conv", "decoder"):
        if isinstance(part := getattr(vae, name, None), nn.Module):
            part.to(memory_format=torch.channels_last)
    decoder = getattr(vae, "decoder", None)
    if isinstance(decoder, nn.Module) and _nhwc_input not in decoder._forward_pre_hooks.values():
        decoder.register_forward_pre_hook(_nhwc_input)
