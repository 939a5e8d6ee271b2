"""Full-size turbo pipelines with random weights, built from configs bundled in the project.

For speed work on a machine that cannot download weights: the real architectures (real FLOPs,
real memory), meaningless pixels. The tokenizer is the tiny models' byte-level stand-in: prompts
still become 77 token ids, so every shape matches the published models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from turbobatch.models.tiny import SD_TURBO_SCHEDULER, SDXL_TURBO_SCHEDULER, _tokenizer

CONFIGS = Path(__file__).with_name("configs")
RANDOM_MODELS = {"stabilityai/sd-turbo": "sd-turbo", "stabilityai/sdxl-turbo": "sdxl-turbo"}


def config(model: str, component: str) -> dict[str, Any]:
    return json.loads((CONFIGS / RANDOM_MODELS[model] / f"{component}.json").read_text())


def build_components(
    model: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """UNet, VAE and text encoder(s) at full size, initialised on ``device`` ("meta" to count)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    with torch.device(device):
        parts = {
            "unet": UNet2DConditionModel.from_config(config(model, "unet")),
            "vae": AutoencoderKL.from_config(config(model, "vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**config(model, "text_encoder"))),
        }
        if RANDOM_MODELS[model] == "sdxl-turbo":
            parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**config(model, "text_encoder_2")))
    return {name: module.to(dtype) for name, module in parts.items()}


def tiny_autoencoder(latent_channels: int = 4, scale_factor: int = 8) -> Any:
    """An AutoencoderTiny of the published TAESD architecture (madebyollin/taesd and taesdxl
    share it: 64 channels, 1+3+3+3 encoder and 3+3+3+1 decoder blocks, 8x), random weights.
    A ``scale_factor`` other than 8 keeps the channels and drops blocks (the tiny test models
    upscale 2x)."""
    from diffusers import AutoencoderTiny

    blocks = scale_factor.bit_length()  # one 2x upsampling between consecutive blocks
    if scale_factor != 2 ** (blocks - 1) or blocks < 2:
        raise ValueError(f"scale_factor must be a power of two >= 2, got {scale_factor}")
    torch.manual_seed(0)
    return AutoencoderTiny(
        encoder_block_out_channels=(64,) * blocks,
        decoder_block_out_channels=(64,) * blocks,
        num_encoder_blocks=(1,) + (3,) * (blocks - 1),
        num_decoder_blocks=(3,) * (blocks - 1) + (1,),
        latent_channels=latent_channels,
    )


def build_random_pipeline(model: str, device: str, dtype: torch.dtype) -> Any:
    from diffusers import (
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    parts = build_components(model, device, dtype)
    if RANDOM_MODELS[model] == "sdxl-turbo":
        return StableDiffusionXLPipeline(
            **parts,
            tokenizer=_tokenizer(),
            tokenizer_2=_tokenizer(),
            scheduler=EulerAncestralDiscreteScheduler(**SDXL_TURBO_SCHEDULER),
            add_watermarker=False,
        )
    return StableDiffusionPipeline(
        **parts,
        tokenizer=_tokenizer(),
        scheduler=EulerDiscreteScheduler(**SD_TURBO_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
