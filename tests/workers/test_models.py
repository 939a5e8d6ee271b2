import json

import pytest

from jobs.errors import JobError
from workers.models import check_vae, resolve_controlnet, resolve_model
from workers.tiny import tiny_model_path


def test_families_and_native_sizes():
    sd, sdxl = resolve_model("tiny-sd-turbo"), resolve_model("tiny-sdxl-turbo")
    assert (sd.pipeline_class, sd.addition_embed_type, sd.native_height) == ("StableDiffusionPipeline", None, 64)
    assert (sdxl.pipeline_class, sdxl.addition_embed_type, sdxl.native_width) == ("StableDiffusionXLPipeline", "text_time", 64)


def test_controlnets_pair_with_their_family_only():
    sd, sdxl = resolve_model("tiny-sd-turbo"), resolve_model("tiny-sdxl-turbo")
    assert resolve_controlnet("tiny-sd-controlnet", sd).cross_attention_dim == 32
    assert resolve_controlnet("tiny-sdxl-controlnet", sdxl).addition_embed_type == "text_time"
    with pytest.raises(JobError, match=r"--controlnet: 'tiny-sd-controlnet' was made for SD 1.x/2.x models .* is SDXL"):
        resolve_controlnet("tiny-sd-controlnet", sdxl)
    with pytest.raises(JobError, match=r"--controlnet: 'tiny-sdxl-controlnet' was made for SDXL models .* is SD 1.x/2.x"):
        resolve_controlnet("tiny-sdxl-controlnet", sd)


def test_wrong_kinds_of_folders_are_named(tmp_path):
    sd = resolve_model("tiny-sd-turbo")
    with pytest.raises(JobError, match="--controlnet: cannot load 'tiny-sd-turbo'"):
        resolve_controlnet("tiny-sd-turbo", sd)
    with pytest.raises(JobError, match="--vae: .* is a ControlNetModel; expected a folder of AutoencoderKL or AutoencoderTiny"):
        check_vae(str(tiny_model_path("tiny-sd-controlnet")), sd)
    with pytest.raises(JobError, match="--vae: cannot load"):
        check_vae(str(tmp_path), sd)


def test_vaes_of_both_classes_must_decode_the_models_latents(tmp_path):
    sd, sdxl = resolve_model("tiny-sd-turbo"), resolve_model("tiny-sdxl-turbo")
    assert (sd.latent_channels, sd.vae_scale_factor) == (4, 2)
    assert check_vae(str(tiny_model_path("tiny-sdxl-turbo") / "vae"), sd) == "AutoencoderKL"
    assert check_vae("tiny-taesd", sd) == check_vae("tiny-taesd", sdxl) == "AutoencoderTiny"
    # A TAESD3-like config (16 latent channels, 8x): the published taesd config's fields, no weights needed.
    (tmp_path / "config.json").write_text(json.dumps({
        "_class_name": "AutoencoderTiny", "latent_channels": 16,
        "decoder_block_out_channels": [64, 64, 64, 64], "encoder_block_out_channels": [64, 64, 64, 64]}))
    with pytest.raises(JobError, match=r"--vae: '.*' decodes 16-channel latents upscaled 8x, but --model "
                                       r"'tiny-sd-turbo' makes 4-channel latents upscaled 2x"):
        check_vae(str(tmp_path), sd)
