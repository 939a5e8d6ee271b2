"""Z-Image and FLUX.2 klein as the driver sees them: resolved from listings and configs only
(tiny twins on disk), their model-card defaults filled in by resolve_spec, and the settings each
family cannot take refused as a JobError before any actor starts."""

from __future__ import annotations

import dataclasses

import pytest

from turbobatch.errors import JobError
from turbobatch.jobs.run.cluster import ClusterInfo, resolve_spec
from turbobatch.models.resolve import resolve_controlnet, resolve_model
from turbobatch.spec.job import JobSpec

CPU = ClusterInfo(gpus=0, cpus=4, nodes=({"CPU": 4.0},))
GPU = ClusterInfo(gpus=1, cpus=16, nodes=({"CPU": 16.0, "GPU": 1.0},))


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    return {name: resolve_model(name) for name in ("tiny-z-image-turbo", "tiny-flux2-klein", "tiny-sd-turbo")}


def resolve(model, cluster=CPU, **fields):
    return resolve_spec(JobSpec(input="i", output="o", model=model.name, **fields), model, cluster)


def test_the_twins_resolve_to_their_families(models):
    z, klein = models["tiny-z-image-turbo"], models["tiny-flux2-klein"]
    assert (z.pipeline_class, z.family, z.latent_channels, z.size_multiple) == ("ZImagePipeline", "z-image", 16, 4)
    assert (klein.pipeline_class, klein.family, klein.distilled) == ("Flux2KleinPipeline", "flux2-klein", True)
    assert (z.native_height, klein.native_width) == (64, 64)  # the VAE config's sample_size
    assert models["tiny-sd-turbo"].family == "sd"


def test_naming_only_the_model_gives_its_card_settings(models):
    z = resolve(models["tiny-z-image-turbo"], GPU)
    assert (z.steps, z.guidance_scale, z.dtype, z.height) == (8, 0.0, "bfloat16", 64)
    klein = resolve(models["tiny-flux2-klein"], GPU)
    assert (klein.steps, klein.guidance_scale, klein.dtype) == (4, 1.0, "bfloat16")
    sd = resolve(models["tiny-sd-turbo"], GPU)
    assert (sd.steps, sd.guidance_scale, sd.dtype) == (1, 0.0, "float16")  # unchanged
    assert resolve(models["tiny-z-image-turbo"], steps=3, guidance_scale=0.0).steps == 3
    assert resolve(models["tiny-z-image-turbo"]).dtype == "float32"  # on CPU


@pytest.mark.parametrize(
    ("model", "fields", "message"),
    [
        ("tiny-z-image-turbo", {"height": 1024, "width": 1000}, "--width: 1000 is not a multiple of 16; Z-Image"),
        ("tiny-flux2-klein", {"height": 520}, "--height: 520 is not a multiple of 16; FLUX.2 klein turns"),
        ("tiny-z-image-turbo", {"negative_prompt_column": "neg"}, "--negative-prompt-column: 'neg' has no effect"),
        ("tiny-flux2-klein", {"negative_prompt_column": "neg"}, "takes no negative prompt"),
        ("tiny-flux2-klein", {"guidance_scale": 3.5}, "--guidance-scale: 3.5 has no effect on the step-distilled"),
        ("tiny-z-image-turbo", {"compile": "default"}, "--compile: applies to UNet models"),
        ("tiny-flux2-klein", {"speedups": "unet_fused_norms"}, "--speedups unet_fused_norms: applies to UNet"),
    ],
)
def test_what_a_family_cannot_take_is_a_job_error(models, model, fields, message):
    """On the published models' VAE scale (8: sides in multiples of 16; the twins' is 2)."""
    published = dataclasses.replace(models[model], vae_scale_factor=8)
    with pytest.raises(JobError, match=message):
        resolve(published, **fields)


def test_guidance_turns_negative_prompts_on_for_z_image(models):
    spec = resolve(models["tiny-z-image-turbo"], negative_prompt_column="neg", guidance_scale=2.0)
    assert spec.guidance_scale == 2.0


def test_a_controlnet_with_a_dit_model_is_refused_before_its_config_is_read(models):
    with pytest.raises(JobError, match="--controlnet: 'tiny-sd-controlnet' cannot be used with --model 'tiny-z-ima"):
        resolve_controlnet("tiny-sd-controlnet", models["tiny-z-image-turbo"])
