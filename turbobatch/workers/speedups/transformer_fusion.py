"""The DiT blocks' norm + modulation (+ the gated residual before it) as one pass of the project's
kernel (kernels/adanorm.cu), in Z-Image's and FLUX.2's transformers: the same function, applied
once to a loaded model.

Each stock block gets an instance ``forward`` that is diffusers' own, line for line, with every
``norm(x) * (1 + scale) + shift`` and every ``x + gate * y`` followed by the next norm replaced by
``kernels.modulated_norm`` / ``kernels.gated_residual`` (one launch where torch runs 4-7 elementwise
and reduction kernels, each reading and writing the [B, S, D] activation). The attention, the
feed-forward and the modulation projections are untouched. On CPU the kernel ops are their torch
references, which repeat diffusers' ops exactly, so a patched block computes bit for bit what the
stock one does; on CUDA within the bound of tests/unit/kernels/test_adanorm_cu.py. A block whose
class overrides ``forward``, whose norms are not stock (type, affine, bias), or that is already
patched is left alone. Whether it pays on a GPU is for ``make gpu-check`` to measure.

- ``ZImageTransformerBlock`` (layers, noise and context refiners; RMSNorm with weight): 3 launches
  per block instead of the norm1 * scale, attention_norm2 + gate + add + ffn_norm1 * scale, and
  ffn_norm2 + gate + add chains.
- ``Flux2TransformerBlock`` (double stream; LayerNorm without affine): 6 launches per block, 3 per
  stream; ``Flux2SingleTransformerBlock``: 2.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from diffusers.models.normalization import RMSNorm
from diffusers.models.transformers.transformer_flux2 import (
    Flux2Modulation,
    Flux2SingleTransformerBlock,
    Flux2TransformerBlock,
)
from diffusers.models.transformers.transformer_z_image import ZImageTransformerBlock, select_per_token
from torch import nn

from turbobatch import kernels


def _stock_rms(norm: Any) -> bool:
    return type(norm) is RMSNorm and norm.bias is None


def _stock_layer(norm: Any) -> bool:
    return type(norm) is nn.LayerNorm and not norm.elementwise_affine and len(norm.normalized_shape) == 1


def _z_image_forward(
    self: ZImageTransformerBlock,
    x: torch.Tensor,
    attn_mask: torch.Tensor,
    freqs_cis: torch.Tensor,
    adaln_input: torch.Tensor | None = None,
    noise_mask: torch.Tensor | None = None,
    adaln_noisy: torch.Tensor | None = None,
    adaln_clean: torch.Tensor | None = None,
) -> torch.Tensor:
    """``ZImageTransformerBlock.forward`` with the fused ops. The scales go in raw: the kernel adds 1
    (rounded to the dtype, as ``1.0 + scale`` is); ``select_per_token`` of ``1 + s`` is ``1 +`` the
    selection of s, bit for bit."""
    n1, n2, f1, f2 = self.attention_norm1, self.attention_norm2, self.ffn_norm1, self.ffn_norm2
    if self.modulation:
        if noise_mask is not None:
            seq_len = x.shape[1]
            noisy = self.adaLN_modulation(adaln_noisy).chunk(4, dim=1)
            clean = self.adaLN_modulation(adaln_clean).chunk(4, dim=1)
            scale_msa, gate_msa, scale_mlp, gate_mlp = (
                select_per_token(a if i % 2 == 0 else a.tanh(), b if i % 2 == 0 else b.tanh(), noise_mask, seq_len)
                for i, (a, b) in enumerate(zip(noisy, clean))
            )
        else:
            scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(adaln_input).unsqueeze(1).chunk(4, dim=2)
            gate_msa, gate_mlp = gate_msa.tanh(), gate_mlp.tanh()
    else:
        scale_msa = gate_msa = scale_mlp = gate_mlp = None
    h = kernels.modulated_norm(x, "rms", n1.weight, n1.eps, scale_msa)
    attn_out = self.attention(h, attention_mask=attn_mask, freqs_cis=freqs_cis)
    x, h = kernels.gated_residual(
        x,
        attn_out,
        gate_msa,
        y_norm=True,
        y_weight=n2.weight,
        y_eps=n2.eps,
        norm="rms",
        weight=f1.weight,
        eps=f1.eps,
        scale=scale_mlp,
    )
    x, _ = kernels.gated_residual(x, self.feed_forward(h), gate_mlp, y_norm=True, y_weight=f2.weight, y_eps=f2.eps)
    return x


def _flux2_double_forward(
    self: Flux2TransformerBlock,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    temb_mod_img: torch.Tensor,
    temb_mod_txt: torch.Tensor,
    image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    joint_attention_kwargs: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Flux2TransformerBlock.forward`` with the fused ops (both streams)."""
    joint_attention_kwargs = joint_attention_kwargs or {}
    (shift_msa, scale_msa, gate_msa), (shift_mlp, scale_mlp, gate_mlp) = Flux2Modulation.split(temb_mod_img, 2)
    (c_shift_msa, c_scale_msa, c_gate_msa), (c_shift_mlp, c_scale_mlp, c_gate_mlp) = Flux2Modulation.split(
        temb_mod_txt, 2
    )
    norm_hidden_states = kernels.modulated_norm(hidden_states, "layer", None, self.norm1.eps, scale_msa, shift_msa)
    norm_encoder_hidden_states = kernels.modulated_norm(
        encoder_hidden_states, "layer", None, self.norm1_context.eps, c_scale_msa, c_shift_msa
    )
    attn_output, context_attn_output = self.attn(
        hidden_states=norm_hidden_states,
        encoder_hidden_states=norm_encoder_hidden_states,
        image_rotary_emb=image_rotary_emb,
        **joint_attention_kwargs,
    )
    hidden_states, norm_hidden_states = kernels.gated_residual(
        hidden_states, attn_output, gate_msa, norm="layer", eps=self.norm2.eps, scale=scale_mlp, shift=shift_mlp
    )
    hidden_states, _ = kernels.gated_residual(hidden_states, self.ff(norm_hidden_states), gate_mlp)
    encoder_hidden_states, norm_encoder_hidden_states = kernels.gated_residual(
        encoder_hidden_states,
        context_attn_output,
        c_gate_msa,
        norm="layer",
        eps=self.norm2_context.eps,
        scale=c_scale_mlp,
        shift=c_shift_mlp,
    )
    encoder_hidden_states, _ = kernels.gated_residual(
        encoder_hidden_states, self.ff_context(norm_encoder_hidden_states), c_gate_mlp, clip=True
    )
    return encoder_hidden_states, hidden_states


def _flux2_single_forward(
    self: Flux2SingleTransformerBlock,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor | None,
    temb_mod: torch.Tensor,
    image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    joint_attention_kwargs: dict[str, Any] | None = None,
    split_hidden_states: bool = False,
    text_seq_len: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``Flux2SingleTransformerBlock.forward`` with the fused ops."""
    if encoder_hidden_states is not None:
        text_seq_len = encoder_hidden_states.shape[1]
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
    mod_shift, mod_scale, mod_gate = Flux2Modulation.split(temb_mod, 1)[0]
    norm_hidden_states = kernels.modulated_norm(hidden_states, "layer", None, self.norm.eps, mod_scale, mod_shift)
    attn_output = self.attn(
        hidden_states=norm_hidden_states, image_rotary_emb=image_rotary_emb, **(joint_attention_kwargs or {})
    )
    hidden_states, _ = kernels.gated_residual(hidden_states, attn_output, mod_gate, clip=True)
    if split_hidden_states:
        return hidden_states[:, :text_seq_len], hidden_states[:, text_seq_len:]
    return hidden_states


def _eligible(m: nn.Module) -> Any:
    """The fused forward for a stock, not yet patched block, else None."""
    if "forward" in vars(m):
        return None  # patched already (by us or by someone else)
    if type(m) is ZImageTransformerBlock:
        norms = (m.attention_norm1, m.attention_norm2, m.ffn_norm1, m.ffn_norm2)
        return _z_image_forward if all(_stock_rms(n) for n in norms) else None
    if type(m) is Flux2TransformerBlock:
        norms = (m.norm1, m.norm1_context, m.norm2, m.norm2_context)
        return _flux2_double_forward if all(_stock_layer(n) for n in norms) else None
    if type(m) is Flux2SingleTransformerBlock:
        return _flux2_single_forward if _stock_layer(m.norm) else None
    return None


def fused_forwards(model: nn.Module) -> dict[str, int]:
    """Patch every eligible Z-Image / FLUX.2 block under ``model`` in place; returns how many of each
    class were patched (nothing for any other model, e.g. a UNet: an empty dict)."""
    counts: dict[str, int] = {}
    for m in model.modules():
        forward = _eligible(m)
        if forward is not None:
            m.forward = types.MethodType(forward, m)
            counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
    return counts


def fuse_transformer_norms(pipe: Any) -> dict[str, int]:
    """``fused_forwards`` on ``pipe.transformer`` when the pipeline has one (sd-turbo's and
    sdxl-turbo's have a UNet: nothing to do)."""
    transformer = getattr(pipe, "transformer", None)
    return fused_forwards(transformer) if isinstance(transformer, nn.Module) else {}
