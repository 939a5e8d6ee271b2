"""GroupNorm (+ the SiLU after it) as one pass of the project's kernel, in the VAE decoder and in
the UNet: the same function (only float rounding may move), applied once to a loaded model.

``kernels.group_norm`` is our PyCUDA kernel on CUDA and its torch reference on CPU, so on CPU a
fused model computes exactly what the stock one does. A GroupNorm whose output feeds a SiLU
and nothing else becomes ``FusedGroupNorm(silu=True)`` (one read and one write of the
activation instead of two of each); any other GroupNorm ``FusedGroupNorm(silu=False)``. Modules
with a forward other than diffusers' own, or configured otherwise, are left alone; applying a
fusion again changes nothing. Whether it pays on a GPU is for ``make gpu-check`` to measure.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from diffusers.models.autoencoders.vae import Decoder
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from torch import nn

from turbobatch import kernels


class FusedGroupNorm(nn.Module):
    """An ``nn.GroupNorm`` (same Parameters, same state_dict keys) computed by
    ``kernels.group_norm``, with the following SiLU fused in when ``silu``."""

    def __init__(self, norm: nn.GroupNorm, silu: bool) -> None:
        super().__init__()
        self.num_groups, self.num_channels, self.eps = norm.num_groups, norm.num_channels, norm.eps
        self.affine, self.silu = norm.affine, silu
        self.register_parameter("weight", norm.weight)
        self.register_parameter("bias", norm.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.group_norm(x, self.num_groups, self.weight, self.bias, self.eps, silu=self.silu)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, silu={self.silu}"


class SiLULinear(nn.Module):
    """``linear(silu(x))`` with the Linear's own Parameters (same state_dict keys): where a
    resnet's shared SiLU also acted on the time embedding, that SiLU moves in here, so the
    resnet's ``nonlinearity`` can become Identity once its norms apply SiLU themselves."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_parameter("weight", linear.weight)
        self.register_parameter("bias", linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.silu(x), self.weight, self.bias)


def _fusable_resnet(m: Any) -> bool:
    """A stock-forward ResnetBlock2D whose ``nonlinearity`` (a SiLU) acts right after norm1, right
    after norm2 and, unless ``skip_time_act``, on the time embedding: no scale_shift (that puts
    a scale and shift between norm2 and its SiLU), no up/down sampling."""
    return (
        isinstance(m, ResnetBlock2D)
        and type(m).forward is ResnetBlock2D.forward
        and m.time_embedding_norm != "scale_shift"
        and m.upsample is None
        and m.downsample is None
        and type(m.nonlinearity) is nn.SiLU
        and type(m.norm1) is nn.GroupNorm
        and type(m.norm2) is nn.GroupNorm
        and (m.time_emb_proj is None or m.skip_time_act or type(m.time_emb_proj) is nn.Linear)
    )


def _fuse_resnet(m: ResnetBlock2D) -> int:
    m.norm1, m.norm2 = FusedGroupNorm(m.norm1, silu=True), FusedGroupNorm(m.norm2, silu=True)
    if m.time_emb_proj is not None and not m.skip_time_act:
        m.time_emb_proj = SiLULinear(m.time_emb_proj)
    m.nonlinearity = nn.Identity()
    return 2


# Modules that apply a GroupNorm held in an attribute to their input, with no SiLU after it.
_PLAIN_NORMS = ((Attention, "group_norm"), (Transformer2DModel, "norm"))


def _fuse_blocks(root: nn.Module) -> int:
    """Every fusable resnet under ``root`` (norms with their SiLU) and every plain norm of
    ``_PLAIN_NORMS`` (without); returns how many GroupNorms were replaced."""
    count = 0
    for m in list(root.modules()):
        if _fusable_resnet(m):
            count += _fuse_resnet(m)
            continue
        for cls, attr in _PLAIN_NORMS:
            if isinstance(m, cls) and type(norm := getattr(m, attr, None)) is nn.GroupNorm:
                setattr(m, attr, FusedGroupNorm(norm, silu=False))
                count += 1
    return count


def _fuse_output_norm(model: nn.Module, stock: type) -> int:
    """``conv_norm_out`` then ``conv_act`` (a SiLU), as a stock-forward ``stock`` applies them."""
    if (
        isinstance(model, stock)
        and type(model).forward is stock.forward
        and type(model.conv_norm_out) is nn.GroupNorm
        and type(model.conv_act) is nn.SiLU
    ):
        model.conv_norm_out, model.conv_act = FusedGroupNorm(model.conv_norm_out, silu=True), nn.Identity()
        return 1
    return 0


def fuse_group_norms(vae: nn.Module) -> int:
    """In ``vae.decoder``: each fusable ResnetBlock2D's norm1/norm2 with their SiLU;
    ``conv_norm_out`` + ``conv_act`` likewise; each attention's ``group_norm`` (applied by the
    processor to a [B, C, HW] view) without. Returns how many GroupNorms were replaced
    (AutoencoderTiny has none: 0)."""
    decoder = getattr(vae, "decoder", None)
    if not isinstance(decoder, nn.Module):
        return 0
    return _fuse_blocks(decoder) + _fuse_output_norm(decoder, Decoder)


def fuse_unet_group_norms(unet: nn.Module) -> int:
    """In a UNet2DConditionModel (sd-turbo's and sdxl-turbo's): each fusable ResnetBlock2D's
    norm1/norm2 with their SiLU (its time-embedding SiLU moves into ``time_emb_proj``); each
    Transformer2DModel's input ``norm`` without; ``conv_norm_out`` + ``conv_act`` with. Returns
    how many GroupNorms were replaced (0 for any other model)."""
    if not isinstance(unet, UNet2DConditionModel):
        return 0
    return _fuse_blocks(unet) + _fuse_output_norm(unet, UNet2DConditionModel)
