"""Tiny random-weight twins of the turbo pipelines, for tests and demos.

No machine of ours reaches the Hugging Face Hub, so the project builds small pipelines of the
same component classes as the real models, saves them once to a cache folder and loads them
through the same ``from_pretrained`` code as real weights. Weights come from a fixed seed, so
every machine builds the same model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

TINY_MODELS = ("tiny-sd-turbo",)
_BUILD_VERSION = "v2"  # bump when the architecture or seed below changes

# sd-turbo's published scheduler: EulerDiscrete, trailing spacing, epsilon prediction.
SD_TURBO_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "timestep_spacing": "trailing",
    "steps_offset": 1,
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}


def cache_dir() -> Path:
    """Where built models live: $TURBOBATCH_CACHE, else ~/.cache/turbobatch."""
    root = os.environ.get("TURBOBATCH_CACHE") or Path.home() / ".cache" / "turbobatch"
    return Path(root)


def tiny_model_path(name: str) -> Path:
    """Return the folder of tiny model ``name``, building it on first use."""
    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny model {name!r}; known: {', '.join(TINY_MODELS)}")
    target = cache_dir() / "models" / f"{name}-{_BUILD_VERSION}"
    if (target / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a private folder and rename: concurrent builders (several actors) never see
    # a half-written model, and the loser of the rename race simply discards its copy.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        _build_tiny_sd_turbo().save_pretrained(staging)
        _write_tokenizer_files(staging / "tokenizer")
        try:
            staging.rename(target)
        except OSError:
            if not (target / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _byte_level_vocab() -> dict[str, int]:
    """Every byte a token (plus its end-of-word form); no merges."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in bytes_to_unicode().values():
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    return vocab


def _byte_level_tokenizer():
    from transformers import CLIPTokenizer

    # transformers 5 needs model_max_length explicitly, or truncation never triggers.
    return CLIPTokenizer(vocab=_byte_level_vocab(), merges=[], model_max_length=77)


def _write_tokenizer_files(tokenizer_dir: Path) -> None:
    """Lay the tokenizer out as the published SD checkpoints do: vocab.json + merges.txt.

    transformers 5 saves only tokenizer.json; real sd-turbo ships the two classic files, so the
    tiny model does too and loading goes through the same code path.
    """
    (tokenizer_dir / "vocab.json").write_text(json.dumps(_byte_level_vocab(), ensure_ascii=False), encoding="utf-8")
    (tokenizer_dir / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    (tokenizer_dir / "tokenizer.json").unlink(missing_ok=True)


def _build_tiny_sd_turbo():
    """SD 2.1-architecture pipeline (sd-turbo's classes), 64x64 native size."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
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
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.18215,
    )
    tokenizer = _byte_level_tokenizer()
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=EulerDiscreteScheduler(**SD_TURBO_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
