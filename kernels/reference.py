"""Torch reference ops, bit-exact with diffusers' own post-processing."""

from __future__ import annotations

import torch


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
