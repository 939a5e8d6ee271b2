"""JobSpec's img2img and LoRA fields: parsed and refused before any work starts."""

from __future__ import annotations

import pytest

from turbobatch.errors import JobError
from turbobatch.spec.job import JobSpec
from turbobatch.spec.lora import parse_lora


def spec(**kw) -> JobSpec:
    s = JobSpec(input="in", output="out", **kw)
    s.validate()
    return s


@pytest.mark.parametrize(("steps", "strength"), [(1, 0.5), (2, 0.4), (4, 0.2), (3, 0.3)])
def test_no_denoising_step_is_a_job_error_naming_the_values_and_the_rule(steps, strength):
    with pytest.raises(JobError, match=rf"--strength {strength} with --steps {steps}.*steps \* strength >= 1"):
        spec(init_image_column="img", steps=steps, strength=strength)


def test_a_swept_step_count_is_checked_too():
    with pytest.raises(JobError, match="--sweep steps 1"):
        spec(init_image_column="img", steps=4, strength=0.5, sweep={"steps": [4, 1]})


def test_valid_img2img_jobs():
    assert spec(init_image_column="img", steps=2, strength=0.5).resize_mode == "center_crop"
    assert spec(init_image_column="img", steps=1, strength=1.0, resize_mode="fit").strength == 1.0


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"init_image_column": "img", "strength": 1.5}, "--strength: 1.5 is out of range"),
        ({"init_image_column": "img", "resize_mode": "zoom"}, "--resize-mode: 'zoom' is not valid"),
        ({"strength_column": "s"}, "--strength-column: 's' given but no --init-image-column"),
        ({"lora_column": "l"}, "--lora-column: 'l' given but no --lora"),
        ({"lora": ["a.safetensors", "x/a.safetensors"]}, "two LoRAs are named alike"),
        ({"lora": "a.safetensors:99"}, "scale 99.0 is out of range"),
        (
            {"init_image_column": "img", "controlnet": "c", "control_image_column": "c"},
            "img2img with a ControlNet is not supported",
        ),
    ],
)
def test_bad_values_are_refused(kw, message):
    with pytest.raises(JobError, match=message):
        spec(**kw)


def test_lora_sources_names_and_scales():
    assert parse_lora("org/style-lora") == ["style-lora", "org/style-lora", 1.0]
    assert parse_lora("s3://bucket/loras/ink.safetensors:0.8") == ["ink", "s3://bucket/loras/ink.safetensors", 0.8]
    assert parse_lora("s3://bucket/loras/ink.safetensors") == ["ink", "s3://bucket/loras/ink.safetensors", 1.0]
    assert parse_lora("oil=/data/l/v2:-0.5") == ["oil", "/data/l/v2", -0.5]
    assert spec(lora=["a=/x:0.5", "/y/b.safetensors"]).lora == [["a", "/x", 0.5], ["b", "/y/b.safetensors", 1.0]]


def test_loras_are_part_of_the_fingerprint():
    base = spec(lora=["a=/x:0.5"])
    assert spec(lora=["a=/x:0.6"]).output_hash() != base.output_hash()
    assert spec(lora=["a=/z:0.5"]).output_hash() != base.output_hash()
    assert spec(lora=["a=/x:0.5"]).output_hash() == base.output_hash()
    assert spec(lora=[["a", "/x", 0.5]]).output_hash() == base.output_hash()  # spec.json's form reads back alike
    assert (
        spec(init_image_column="i", strength=0.5, steps=2).output_hash()
        != spec(init_image_column="i", strength=0.75, steps=2).output_hash()
    )


def test_every_img2img_and_lora_flag_reaches_the_spec():
    from turbobatch.jobs.cli import parse_render_command

    argv = "in.parquet out --model tiny-sd-turbo --steps 4 --init-image-column img --strength 0.6 "
    argv += "--strength-column s --resize-mode stretch --lora ink=/l/ink.safetensors:0.7 --lora /l/oil --lora-column l"
    job = parse_render_command(argv.split(), "turbobatch render")[0]
    assert (job.init_image_column, job.strength, job.strength_column, job.resize_mode) == ("img", 0.6, "s", "stretch")
    assert job.lora == [["ink", "/l/ink.safetensors", 0.7], ["oil", "/l/oil", 1.0]]
    assert job.lora_column == "l"
