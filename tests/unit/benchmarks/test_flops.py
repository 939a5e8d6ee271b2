"""benchmarks/flops.py on the transformer families: what the meta-device counter returns at 1024²."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from benchmarks.flops import flops_per_image
from turbobatch.models.random_weights import build_components

T = 1e12


@pytest.fixture(scope="module")
def z_image() -> SimpleNamespace:
    return SimpleNamespace(**build_components("Tongyi-MAI/Z-Image-Turbo", device="meta"))


def test_z_image_turbo_at_1024_matches_a_hand_count(z_image):
    """Hand count, 2 FLOPs per parameter per token: the transformer sees 64x64 = 4,096 image tokens
    (1024/8 latent, 2x2 patches) + 64 caption tokens: 2 x 6.15e9 x 4,160 = 51 TFLOP per step, plus
    attention (30 layers x 4 x 4,160² x 3,840 = 8 TFLOP): ~59. Qwen3-4B over 512 tokens: 2 x 3.6e9
    non-embedding parameters x 512 = 3.7 TFLOP. The decode: FLUX.1's VAE is SD's at 16 latent
    channels, 2.5 TFLOP at 512², x4 pixels = 10 TFLOP. 8 steps: ~490 TFLOP per image."""
    f = flops_per_image(z_image, 1024, 1024, steps=8)
    assert 45 * T < f["unet"] / 8 < 70 * T
    assert 3 * T < f["text_encoders"] < 4.5 * T
    assert 9 * T < f["vae_decode"] < 11.5 * T
    assert 400 * T < f["total"] < 600 * T
    assert f["total"] == pytest.approx(f["text_encoders"] + f["unet"] + f["vae_decode"])


def test_guidance_doubles_the_text_encoder_and_the_transformer_not_the_decode(z_image):
    one, two = flops_per_image(z_image, 512, 512), flops_per_image(z_image, 512, 512, cfg=True)
    assert two["unet"] == 2 * one["unet"] and two["text_encoders"] == 2 * one["text_encoders"]
    assert two["vae_decode"] == one["vae_decode"]
    # 4x the pixels: the decode ~4x (its mid-block attention grows faster), the transformer more
    # than 4x (attention over 4x the tokens), less than 5x
    big = flops_per_image(z_image, 1024, 1024)
    assert 4 * one["vae_decode"] < big["vae_decode"] < 4.2 * one["vae_decode"]
    assert 4 * one["unet"] < big["unet"] < 5 * one["unet"]


def test_flux2_klein_at_1024_matches_a_hand_count():
    """Hand count: 4,096 image tokens (1024/16: 8x VAE, 2x2 patches) + all 512 text tokens:
    2 x 3.88e9 x 4,608 = 36 TFLOP per step (attention adds 25 blocks x 4 x 4,608² x 3,072 = 6.5,
    the modulation layers run once, not per token: ~-5). Qwen3-4B as a causal LM: 3.7 TFLOP + its
    vocabulary head (2 x 2,560 x 151,936 x 512 = 0.4). Decode ~10 TFLOP. 4 steps: ~160 TFLOP."""
    parts = SimpleNamespace(**build_components("black-forest-labs/FLUX.2-klein-4B", device="meta"))
    f = flops_per_image(parts, 1024, 1024, steps=4)
    assert 30 * T < f["unet"] / 4 < 45 * T
    assert 3.5 * T < f["text_encoders"] < 5 * T
    assert 9 * T < f["vae_decode"] < 11.5 * T
    assert 130 * T < f["total"] < 200 * T


def test_the_unet_models_are_counted_as_before():
    """The published figures of docs/BENCHMARKS.md (sd-turbo, 512², 1 step)."""
    f = flops_per_image(SimpleNamespace(**build_components("stabilityai/sd-turbo", device="meta")), 512, 512)
    assert round(f["unet"] / T, 3) == 0.804 and round(f["text_encoders"] / T, 3) == 0.045
    assert torch.get_default_dtype() == torch.float32  # building on meta left the default alone
