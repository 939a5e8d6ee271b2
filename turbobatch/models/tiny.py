"""Tiny random-weight twins of the turbo pipelines and their ControlNets, for tests and demos.

No machine of ours reaches the Hugging Face Hub, so the project builds small models of the same
component classes as the real ones, saves them once to a cache folder and loads them through
the same ``from_pretrained`` code as real weights. Weights come from fixed seeds, so every
machine builds the same model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

_BUILD_VERSION = "v3"  # bump when an architecture or seed below changes

_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
# The published schedulers: both trailing spacing, epsilon prediction.
SD_TURBO_SCHEDULER = {
    **_BETAS,
    "prediction_type": "epsilon",
    "timestep_spacing": "trailing",
    "steps_offset": 1,
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}
SDXL_TURBO_SCHEDULER = {**_BETAS, "prediction_type": "epsilon", "timestep_spacing": "trailing", "steps_offset": 1}


def cache_dir() -> Path:
    """Where built models live: $TURBOBATCH_CACHE, else ~/.cache/turbobatch."""
    root = os.environ.get("TURBOBATCH_CACHE") or Path.home() / ".cache" / "turbobatch"
    return Path(root)


def tiny_model_path(name: str) -> Path:
    """Return the folder of tiny model ``name``, building it on first use."""
    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny model {name!r}; known: {', '.join(TINY_MODELS)}")
    target = cache_dir() / "models" / f"{name}-{_BUILD_VERSION}"
    if (target / "READY").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a private folder and rename: concurrent builders (several actors) never see
    # a half-written model, and the loser of the rename race simply discards its copy.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        TINY_MODELS[name](staging)
        (staging / "READY").write_text(_BUILD_VERSION)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "READY").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# -- tokenizer: byte-level, laid out as the published checkpoints ship it -----------------
def _byte_level_vocab() -> dict[str, int]:
    """Every byte a token (plus its end-of-word form); no merges."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in bytes_to_unicode().values():
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    return vocab


def _tokenizer() -> Any:
    from transformers import CLIPTokenizer

    # transformers 5 needs model_max_length explicitly, or truncation never triggers.
    return CLIPTokenizer(vocab=_byte_level_vocab(), merges=[], model_max_length=77)


def _write_tokenizer_files(tokenizer_dir: Path) -> None:
    """vocab.json + merges.txt, as real SD checkpoints ship them (transformers 5 saves only
    tokenizer.json), so loading goes through the same code path as real weights."""
    (tokenizer_dir / "vocab.json").write_text(json.dumps(_byte_level_vocab(), ensure_ascii=False), encoding="utf-8")
    (tokenizer_dir / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    (tokenizer_dir / "tokenizer.json").unlink(missing_ok=True)


def _text_config(hidden: int) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(_byte_level_vocab()),
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def _vae(scaling_factor: float, force_upcast: bool) -> Any:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=scaling_factor,
        force_upcast=force_upcast,
    )


# -- SD 2.1 family (sd-turbo) -------------------------------------------------------------
def _sd_unet() -> Any:
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        norm_num_groups=8,
    )


def _build_sd_turbo(folder: Path) -> None:
    """SD 2.1-architecture pipeline (sd-turbo's classes), 64x64 native size."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_text_config(32))
    StableDiffusionPipeline(
        unet=_sd_unet(),
        vae=_vae(0.18215, force_upcast=True),
        text_encoder=text_encoder,
        tokenizer=_tokenizer(),
        scheduler=EulerDiscreteScheduler(**SD_TURBO_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(folder)
    _write_tokenizer_files(folder / "tokenizer")


# -- SDXL family (sdxl-turbo) -------------------------------------------------------------
def _sdxl_unet() -> Any:
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    # text_time conditioning: 6 size/crop numbers x 8 + the pooled text embedding (32).
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        norm_num_groups=8,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=80,
        transformer_layers_per_block=(1, 1),
    )


def _build_sdxl_turbo(folder: Path) -> None:
    """SDXL-architecture pipeline (two text encoders, text_time embedding), 64x64 native size."""
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_text_config(32))
    torch.manual_seed(1)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(32))
    StableDiffusionXLPipeline(
        unet=_sdxl_unet(),
        vae=_vae(0.13025, force_upcast=True),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=_tokenizer(),
        tokenizer_2=_tokenizer(),
        scheduler=EulerAncestralDiscreteScheduler(**SDXL_TURBO_SCHEDULER),
        add_watermarker=False,
    ).save_pretrained(folder)
    _write_tokenizer_files(folder / "tokenizer")
    _write_tokenizer_files(folder / "tokenizer_2")


# -- Tiny autoencoder (TAESD class) ----------------------------------------------------------
def _build_taesd(folder: Path) -> None:
    """An AutoencoderTiny that decodes both tiny models' latents (4 channels, upscaled 2x, as
    their AutoencoderKL does): the stand-in for madebyollin/taesd and taesdxl."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(3)
    vae = AutoencoderTiny(
        encoder_block_out_channels=(16, 16),
        decoder_block_out_channels=(16, 16),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
        latent_channels=4,
    )
    vae.save_pretrained(folder)


# -- ControlNets, built from the matching tiny UNet -----------------------------------------
def _build_controlnet(unet_factory: Callable[[], Any]) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        import torch
        from diffusers import ControlNetModel

        unet = unet_factory()
        torch.manual_seed(2)
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
        # from_unet copies the UNet's weights; perturb them so the ControlNet does something.
        with torch.no_grad():
            for p in controlnet.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        controlnet.save_pretrained(folder)

    return build


def _build_dit(name: str) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        from turbobatch.models import tiny_dit

        getattr(tiny_dit, name)(folder)

    return build


TINY_MODELS: dict[str, Callable[[Path], None]] = {
    "tiny-sd-turbo": _build_sd_turbo,
    "tiny-sdxl-turbo": _build_sdxl_turbo,
    "tiny-sd-controlnet": _build_controlnet(_sd_unet),
    "tiny-sdxl-controlnet": _build_controlnet(_sdxl_unet),
    "tiny-taesd": _build_taesd,
    "tiny-z-image-turbo": _build_dit("build_z_image_turbo"),  # models/tiny_dit.py
    "tiny-flux2-klein": _build_dit("build_flux2_klein"),
}
