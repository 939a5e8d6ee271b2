"""Full-size turbo pipelines with random weights, built from configs bundled in the project.

For speed work on a machine that cannot download weights: the real architectures (real FLOPs,
real memory), meaningless pixels. The tokenizer is the tiny models' byte-level stand-in: prompts
still become 77 token ids (SD, SDXL) or 512 (Z-Image, FLUX.2 klein: both pipelines pad to
max_sequence_length), so every shape matches the published models.

Where the bundled configs (configs/<folder>/<component>.json) come from. None could be read from
the Hub here (no machine of ours reaches it); each was taken from what diffusers and transformers
document offline:

- sd-turbo, sdxl-turbo: the published unet/vae/text_encoder config.json files.
- z-image-turbo (Tongyi-MAI/Z-Image-Turbo): transformer.json = diffusers 0.42's
  ZImageTransformer2DModel defaults (dim 3840, 30 layers, 2 refiner layers, 30 heads, cap_feat_dim
  2560 = Qwen3-4B's width), except axes_lens [1536, 512, 512], which the published file is
  documented to have (the class default is [1024, 512, 512]; only RoPE tables depend on it, not
  FLOPs or parameters). vae.json = FLUX.1's VAE (AutoencoderKL, 16 latent channels, scaling 0.3611,
  shift 0.1159, no quant convs), which Z-Image reuses. scheduler.json = FlowMatchEuler, shift 3.0,
  static (the pipeline's docs; same as models/tiny_dit.py's Z_IMAGE_SCHEDULER). text_encoder.json:
  Qwen3-4B (below) as a Qwen3Model, the class the tiny twin uses and what ZImagePipeline reads
  (hidden_states[-2]); whether the published folder names Qwen3Model or Qwen3ForCausalLM was not
  verified offline (ForCausalLM would add an unused vocabulary projection, tied, so no parameters).
- flux2-klein-4b (black-forest-labs/FLUX.2-klein-4B): transformer.json = diffusers'
  scripts/convert_flux2_to_diffusers.py, get_flux2_transformer_config("klein-4b") (5 double + 20
  single blocks, 24 heads x 128, joint_attention_dim 7680 = 3 Qwen3-4B layers x 2560, no guidance
  embedding). vae.json = AutoencoderKLFlux2's class defaults written out (the same script builds
  the VAE as ``AutoencoderKLFlux2()``). scheduler.json = FLUX2_SCHEDULER of models/tiny_dit.py
  (dynamic, exponential shift). model_index.json: is_distilled true (the 4B klein is
  step-distilled; its card: 4 steps, guidance 1.0). text_encoder.json: Qwen3-4B as
  Qwen3ForCausalLM, the class Flux2KleinPipeline declares.
- Qwen3-4B (both text encoders): Qwen/Qwen3-4B's config.json as transformers' Qwen3 docs and the
  model card give it: 36 layers, width 2560, 32 query / 8 key-value heads of 128, MLP 9728, vocab
  151936, tied embeddings, rope_theta 1e6, rms_norm_eps 1e-6, 4.02B parameters. That the two
  pipelines ship exactly this config (and not, say, an instruct variant with another
  max_position_embeddings, which changes nothing counted here) was not verified offline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from turbobatch.models.tiny import SD_TURBO_SCHEDULER, SDXL_TURBO_SCHEDULER, _tokenizer
from turbobatch.models.tiny_dit import qwen_tokenizer

CONFIGS = Path(__file__).with_name("configs")
RANDOM_MODELS = {
    "stabilityai/sd-turbo": "sd-turbo",
    "stabilityai/sdxl-turbo": "sdxl-turbo",
    "Tongyi-MAI/Z-Image-Turbo": "z-image-turbo",
    "black-forest-labs/FLUX.2-klein-4B": "flux2-klein-4b",
}
DIT_FOLDERS = ("z-image-turbo", "flux2-klein-4b")  # transformer families: a model_index.json each


def config(model: str, component: str) -> dict[str, Any]:
    return json.loads((CONFIGS / RANDOM_MODELS[model] / f"{component}.json").read_text())


def is_dit(model: str) -> bool:
    return RANDOM_MODELS.get(model) in DIT_FOLDERS


def build_components(
    model: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """UNet or transformer, VAE and text encoder(s) at full size, initialised on ``device``
    ("meta" to count: shapes only, no memory)."""
    if is_dit(model):
        return _dit_components(model, device, dtype)
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


def _dit_components(model: str, device: str | torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Transformer, VAE and Qwen3-4B, created in ``dtype`` directly: Z-Image's 10B parameters are
    41 GB in float32, more than the card a bf16 speed run is meant for."""
    import diffusers
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    te = config(model, "text_encoder")
    encoder = Qwen3Model if te["architectures"] == ["Qwen3Model"] else Qwen3ForCausalLM
    made = {c: config(model, c) for c in ("transformer", "vae")}
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            parts = {c: getattr(diffusers, cfg["_class_name"]).from_config(cfg) for c, cfg in made.items()}
            parts["text_encoder"] = encoder(Qwen3Config(**te))
    finally:
        torch.set_default_dtype(previous)
    pads = [
        getattr(parts["transformer"], n) for n in ("x_pad_token", "cap_pad_token") if hasattr(parts["transformer"], n)
    ]
    if str(device) != "meta":  # ZImageTransformer2DModel makes its pad tokens with torch.empty
        with torch.no_grad():
            for pad in pads:
                pad.copy_(torch.randn_like(pad))
    return parts  # already in dtype (a .to(dtype) would only make diffusers warn)


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
    if is_dit(model):
        return _dit_pipeline(model, parts)
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


def _dit_pipeline(model: str, parts: dict[str, Any]) -> Any:
    """ZImagePipeline or Flux2KleinPipeline (model_index.json names it and its flags)."""
    import diffusers

    index = config(model, "model_index")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(config(model, "scheduler"))
    flags = {k: v for k, v in index.items() if not k.startswith("_")}
    pipeline = getattr(diffusers, index["_class_name"])
    return pipeline(scheduler=scheduler, tokenizer=qwen_tokenizer(), **parts, **flags)
