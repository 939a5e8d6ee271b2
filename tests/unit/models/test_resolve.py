import json

import pytest

from turbobatch.errors import JobError
from turbobatch.models.resolve import resolve_controlnet, resolve_model, resolve_vae
from turbobatch.models.tiny import tiny_model_path


def test_families_and_native_sizes():
    sd, sdxl = resolve_model("tiny-sd-turbo"), resolve_model("tiny-sdxl-turbo")
    assert (sd.pipeline_class, sd.addition_embed_type, sd.native_height) == ("StableDiffusionPipeline", None, 64)
    assert (sdxl.pipeline_class, sdxl.addition_embed_type, sdxl.native_width) == (
        "StableDiffusionXLPipeline",
        "text_time",
        64,
    )


def test_controlnets_pair_with_their_family_only():
    sd, sdxl = resolve_model("tiny-sd-turbo"), resolve_model("tiny-sdxl-turbo")
    assert resolve_controlnet("tiny-sd-controlnet", sd).cross_attention_dim == 32
    assert resolve_controlnet("tiny-sdxl-controlnet", sdxl).addition_embed_type == "text_time"
    with pytest.raises(JobError, match=r"--controlnet: 'tiny-sd-controlnet' was made for SD 1.x/2.x models .* is SDXL"):
        resolve_controlnet("tiny-sd-controlnet", sdxl)
    with pytest.raises(
        JobError, match=r"--controlnet: 'tiny-sdxl-controlnet' was made for SDXL models .* is SD 1.x/2.x"
    ):
        resolve_controlnet("tiny-sdxl-controlnet", sd)


def test_wrong_kinds_of_folders_are_named(tmp_path):
    sd = resolve_model("tiny-sd-turbo")
    with pytest.raises(JobError, match="--controlnet: cannot load 'tiny-sd-turbo'"):
        resolve_controlnet("tiny-sd-turbo", sd)
    with pytest.raises(
        JobError, match="--vae: .* is a ControlNetModel; expected a folder of AutoencoderKL or AutoencoderTiny"
    ):
        resolve_vae(str(tiny_model_path("tiny-sd-controlnet")), sd)
    with pytest.raises(JobError, match="--vae: cannot load"):
        resolve_vae(str(tmp_path), sd)


def test_vaes_of_both_classes_must_decode_the_models_latents(tmp_path):
    sd, sdxl = resolve_model("tiny-sd-turbo"), resolve_model("tiny-sdxl-turbo")
    assert (sd.latent_channels, sd.vae_scale_factor) == (4, 2)
    assert resolve_vae(str(tiny_model_path("tiny-sdxl-turbo") / "vae"), sd).vae_class == "AutoencoderKL"
    assert resolve_vae("tiny-taesd", sd).vae_class == resolve_vae("tiny-taesd", sdxl).vae_class == "AutoencoderTiny"
    # A TAESD3-like config (16 latent channels, 8x): the published taesd config's fields, no weights needed.
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "_class_name": "AutoencoderTiny",
                "latent_channels": 16,
                "decoder_block_out_channels": [64, 64, 64, 64],
                "encoder_block_out_channels": [64, 64, 64, 64],
            }
        )
    )
    with pytest.raises(
        JobError,
        match=r"--vae: '.*' decodes 16-channel latents upscaled 8x, but --model "
        r"'tiny-sd-turbo' makes 4-channel latents upscaled 2x",
    ):
        resolve_vae(str(tmp_path), sd)


def test_a_vae_and_a_controlnet_from_a_bucket_load_from_the_nodes_copies(s3_endpoint, s3_bucket, tmp_path, monkeypatch):
    """resolve_weights on the driver, then what an actor does: fetch each component, load the copies."""
    import s3fs

    from tests.conftest import s3_options
    from tests.helpers import upload_folder
    from turbobatch.models import cache as model_cache
    from turbobatch.models.resolve import load_pipeline, resolve_vae, resolve_weights
    from turbobatch.spec.resolved import ResolvedJob

    monkeypatch.setenv("TURBOBATCH_CACHE", str(tmp_path / "cache"))
    options = s3_options(s3_endpoint)
    fs = s3fs.S3FileSystem(**options)
    vae_url = upload_folder(fs, tiny_model_path("tiny-taesd"), f"s3://{s3_bucket}/models/taesd")
    cn_url = upload_folder(fs, tiny_model_path("tiny-sd-controlnet"), f"s3://{s3_bucket}/models/cn")
    model = resolve_model(str(tiny_model_path("tiny-sd-turbo")))
    spec = ResolvedJob(
        input="i",
        output=str(tmp_path / "out"),
        model=model.name,
        vae=vae_url,
        controlnet=cn_url,
        control_image_column="c",
        device="cpu",
        dtype="float32",
        input_storage_options=options,
    )
    vae, controlnet = resolve_vae(vae_url, model, options), resolve_controlnet(cn_url, model, options)
    spec = resolve_weights(spec, model, vae, controlnet)
    assert (spec.model_variant, spec.vae_variant, spec.controlnet_variant) == ("none", "none", "none")
    model_files = spec.sources["model"]["files"]
    assert "vae/config.json" in model_files and "vae/diffusion_pytorch_model.safetensors" not in model_files  # replaced
    fetched = {f.component: f for f in model_cache.fetch_all(spec)}
    assert {c: f.action for c, f in fetched.items()} == {"model": "in_place", "vae": "copied", "controlnet": "copied"}
    pipe = load_pipeline(spec, {c: f.path for c, f in fetched.items()})
    assert type(pipe.vae).__name__ == "AutoencoderTiny" and type(pipe).__name__ == "StableDiffusionControlNetPipeline"
