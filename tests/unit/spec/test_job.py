import json

import pytest

from turbobatch.errors import JobError
from turbobatch.jobs.cli import parse_render_command
from turbobatch.spec.job import JobSpec
from turbobatch.spec.resolved import ResolvedJob


def parse_render_spec(argv, prog="turbobatch render"):
    return parse_render_command(argv, prog)[0]


def parse(*argv: str) -> JobSpec:
    return parse_render_spec(["in.parquet", "out", *argv])


def test_defaults_match_the_documented_contract():
    spec = parse()
    # steps, guidance and size are the model family's (resolve_spec); sd-turbo's are 1 and 0.0
    assert (spec.model, spec.steps, spec.guidance_scale) == ("stabilityai/sd-turbo", None, None)
    assert (spec.sampling().steps, spec.sampling().guidance_scale) == (1, 0.0)
    assert (spec.height, spec.width, spec.dtype, spec.workers) == (None, None, None, None)
    assert (spec.shard_size, spec.format, spec.seed) == (1000, "tar", 0)
    assert (spec.prompt_column, spec.seed_column, spec.key_column) == ("prompt", "seed", None)


def test_every_flag_reaches_the_spec():
    spec = parse(
        "--model",
        "tiny-sd-turbo",
        "--steps",
        "2",
        "--guidance-scale",
        "1.5",
        "--height",
        "64",
        "--width",
        "128",
        "--batch-size",
        "4",
        "--dtype",
        "bfloat16",
        "--device",
        "cpu",
        "--workers",
        "3",
        "--shard-size",
        "10",
        "--format",
        "files",
        "--image-format",
        "jpeg",
        "--quality",
        "80",
        "--seed",
        "7",
        "--prompt-column",
        "text",
        "--negative-prompt-column",
        "neg",
        "--seed-column",
        "s",
        "--key-column",
        "id",
        "--overwrite",
        "--vae",
        "v",
        "--controlnet",
        "c",
        "--control-image-column",
        "ctrl",
        "--control-preprocess",
        "canny",
        "--controlnet-scale",
        "0.5",
        "--max-retries",
        "5",
        "--max-failed-shards",
        "2",
        "--compile",
        "reduce-overhead",
        "--speedups",
        "fused_norms,overlap",
        "--keep-columns",
        "label, id,label",
        "--min-workers",
        "2",
        "--worker-gpus",
        "0.5",
        "--worker-cpus",
        "4",
        "--stall-timeout",
        "60",
        "--variant",
        "fp16",
        "--images-per-prompt",
        "3",
        "--prompt-template",
        "{style} {prompt}",
        "--sweep",
        "style=ink, oil",
        "--steps-column",
        "st",
        "--guidance-scale-column",
        "g",
        "--width-column",
        "w",
        "--height-column",
        "h",
    )
    assert spec.to_dict() == {
        "input": "in.parquet",
        "output": "out",
        "model": "tiny-sd-turbo",
        "steps": 2,
        "guidance_scale": 1.5,
        "height": 64,
        "width": 128,
        "batch_size": 4,
        "dtype": "bfloat16",
        "workers": 3,
        "min_workers": 2,
        "worker_gpus": 0.5,
        "worker_cpus": 4.0,
        "stall_timeout": 60.0,
        "shard_size": 10,
        "format": "files",
        "image_format": "jpeg",
        "quality": 80,
        "seed": 7,
        "prompt_column": "text",
        "negative_prompt_column": "neg",
        "seed_column": "s",
        "key_column": "id",
        "overwrite": True,
        "keep_columns": "label,id",
        "device": "cpu",
        "weights": "pretrained",
        "vae": "v",
        "compile": "reduce-overhead",
        "speedups": "overlap,fused_norms",
        "controlnet": "c",
        "control_image_column": "ctrl",
        "control_preprocess": "canny",
        "controlnet_scale": 0.5,
        "max_retries": 5,
        "max_failed_shards": 2,
        "storage_options": {},
        "input_storage_options": {},
        "output_storage_options": {},
        # --variant as asked; the driver resolves it per component with the files to fetch (spec/resolved.py)
        "variant": "fp16",
        "images_per_prompt": 3,
        "prompt_template": "{style} {prompt}",
        "sweep": [["style", ["ink", "oil"]]],
        "steps_column": "st",
        "guidance_scale_column": "g",
        "width_column": "w",
        "height_column": "h",
        # the img2img and LoRA flags, set in tests/unit/spec/test_img2img_lora_spec.py (img2img excludes --controlnet)
        "init_image_column": None,
        "strength": 0.5,
        "strength_column": None,
        "resize_mode": "center_crop",
        "lora": None,
        "lora_column": None,
    }


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "--steps: 0 is out of range"),
        (["--keep-columns", "*,label"], "--keep-columns: '.,label': '.' .every input column. stands alone"),
        (["--keep-columns", "a,,b"], "--keep-columns: 'a,,b' has an empty column name"),
        (["--height", "100"], "--height: 100 is not a multiple of 8"),
        (["--width", "0"], "--width: 0 is out of range"),
        (["--shard-size", "0"], "--shard-size: 0 is out of range"),
        (["--guidance-scale", "nan"], "--guidance-scale: nan is not a finite number"),
        (["--quality", "80"], "--quality: applies to jpeg and webp only"),
        (["--image-format", "webp", "--quality", "101"], "--quality: 101 is out of range"),
        (["--seed", "-1"], "--seed: -1 is out of range"),
        (["--seed", str(2**63)], "--seed: 9223372036854775808 is out of range"),
        (["--batch-size", "0"], "--batch-size: 0 is out of range"),
        (["--max-retries", "-1"], "--max-retries: -1 is out of range"),
        (["--max-failed-shards", "-2"], "--max-failed-shards: -2 is out of range"),
        (["--prompt-column", " "], "--prompt-column: ' ' is not valid"),
        (["--controlnet", "tiny-sd-controlnet"], "--control-image-column: required with --controlnet"),
        (["--control-image-column", "c"], "--control-image-column: 'c' given but no --controlnet"),
        (
            ["--controlnet", "x", "--control-image-column", "c", "--controlnet-scale", "-1"],
            "--controlnet-scale: -1.0 is out of range",
        ),
        (["--speedups", "overlap,turbo"], "--speedups: unknown change 'turbo'; choose from overlap, fold_upsample"),
        (["--min-workers", "0"], "--min-workers: 0 is out of range; expected an integer"),
        (["--workers", "2", "--min-workers", "3"], "--min-workers: 3 is more than --workers 2"),
        (["--worker-gpus", "0"], "--worker-gpus: 0.0 is out of range; expected a number"),
        (["--worker-gpus", "1.5"], "--worker-gpus: 1.5 is not valid; expected a fraction below 1"),
        (["--worker-cpus", "-1"], "--worker-cpus: -1.0 is out of range"),
        (["--stall-timeout", "0"], "--stall-timeout: 0.0 is out of range; expected a number"),
        (["--stall-timeout", "inf"], "--stall-timeout: inf is not a finite number"),
    ],
)
def test_invalid_values_name_the_flag_and_the_range(argv, message):
    with pytest.raises(JobError, match=message.replace("(", r"\(")):
        parse(*argv)


def test_speedups_are_normalized_from_any_spelling(tmp_path):
    assert parse().speedups == "overlap"  # "default"
    assert parse("--speedups", "none").speedups == "none"
    assert parse("--speedups", "default,fused-norms").speedups == "overlap,fused_norms"
    config = tmp_path / "job.yaml"
    config.write_text("input: a\noutput: b\nspeedups: [channels_last, overlap]\n")
    assert parse_render_spec(["--config", str(config)]).speedups == "overlap,channels_last"
    assert "speedups" not in JobSpec.OUTPUT_FIELDS  # like --batch-size: a resume may change it


def test_argparse_rejects_unknown_choices(capsys):
    with pytest.raises(SystemExit):
        parse("--format", "zip")
    assert "invalid choice: 'zip'" in capsys.readouterr().err


def test_yaml_fields_then_flags_override(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("input: data/\noutput: s3://b/out\nsteps: 3\nguidance-scale: 0.5\nshard_size: 5\n")
    spec = parse_render_spec(["--config", str(config), "--steps", "2"])
    assert (spec.input, spec.output, spec.steps, spec.guidance_scale, spec.shard_size) == (
        "data/",
        "s3://b/out",
        2,
        0.5,
        5,
    )


def test_yaml_unknown_field_lists_valid_ones(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("input: a\noutput: b\nstep: 2\n")
    with pytest.raises(JobError, match=r"--config: unknown field 'step'; valid fields: .*steps"):
        parse_render_spec(["--config", str(config)])


def test_yaml_wrong_type_is_named(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("input: a\noutput: b\nsteps: two\n")
    with pytest.raises(JobError, match="--steps: 'two' is not an integer"):
        parse_render_spec(["--config", str(config)])


def test_missing_input_and_output_are_errors():
    with pytest.raises(JobError, match="input: missing; usage: turbobatch render INPUT OUTPUT"):
        parse_render_spec([])


def test_output_hash_changes_only_with_output_fields():
    base = parse()
    assert parse("--workers", "4", "--batch-size", "2").output_hash() == base.output_hash()
    elastic = parse(
        "--workers", "4", "--min-workers", "2", "--worker-gpus", "0.5", "--worker-cpus", "2", "--stall-timeout", "10"
    )
    assert elastic.output_hash() == base.output_hash()  # a resume may change them
    assert parse("--steps", "2").output_hash() != base.output_hash()


def test_storage_options_merge_per_side_and_are_redacted_in_public_dicts():
    spec = parse(
        "--storage-options",
        '{"key": "AK", "secret": "S1", "client_kwargs": {"endpoint_url": "http://e"}}',
        "--output-storage-options",
        '{"secret": "S2"}',
    )
    assert spec.input_options()["secret"] == "S1" and spec.output_options()["secret"] == "S2"
    public = json.dumps(spec.to_public_dict())
    assert "S1" not in public and "S2" not in public and "AK" not in public and "http://e" in public
    assert "S1" not in repr(spec) and "S2" not in repr(spec)


def test_storage_options_must_be_a_json_object(capsys):
    with pytest.raises(SystemExit):
        parse("--storage-options", "[1, 2]")
    assert "--storage-options: expected a JSON object, got list" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("--input-storage-options", "{bad")
    assert "--input-storage-options: not valid JSON" in capsys.readouterr().err


def test_the_example_job_yaml_is_a_valid_job():
    """examples/job.yaml is what a newcomer copies: it must parse and validate as it is."""
    from tests.conftest import REPO

    spec = parse_render_spec(["--config", str(REPO / "examples" / "job.yaml")])
    assert (spec.model, spec.image_format, spec.shard_size) == ("stabilityai/sd-turbo", "jpeg", 1000)
    assert spec.output_options()["config_kwargs"]["retries"]["max_attempts"] == 8
    overridden = parse_render_spec(["--config", str(REPO / "examples" / "job.yaml"), "--steps", "2"])
    assert overridden.steps == 2  # flags win over the file


def test_variant_is_chosen_by_the_user_and_resolved_by_the_driver(tmp_path):
    assert parse().variant == "auto" and "variant" not in JobSpec.OUTPUT_FIELDS  # what it resolves to is
    assert {"model_variant", "vae_variant", "controlnet_variant"} <= set(ResolvedJob.OUTPUT_FIELDS)
    config = tmp_path / "job.yaml"
    config.write_text("input: a\noutput: b\nvariant: fp32\n")
    with pytest.raises(JobError, match="--variant: 'fp32' is not valid; choose one of auto, fp16, none"):
        parse_render_spec(["--config", str(config)])
    config.write_text("input: a\noutput: b\nmodel_variant: fp16\n")
    with pytest.raises(JobError, match="--config: field 'model_variant' is set by the job itself"):
        parse_render_spec(["--config", str(config)])
