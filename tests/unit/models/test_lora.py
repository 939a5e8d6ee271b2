"""LoRAs on the tiny twins of every family (SD and SDXL: UNet LoRAs; Z-Image and FLUX.2 klein:
transformer LoRAs): the driver's header check, and images within 1 level of diffusers' own
``load_lora_weights`` (+ ``fuse_lora`` for one set, ``set_adapters`` per row for --lora-column)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.conftest import write_parquet
from tests.helpers import assert_within_one_level, read_metadata, read_tar_images
from tests.lora_helpers import make_tiny_lora
from tests.unit.workers.test_control import plain_image, plain_pipeline, spec_for
from turbobatch.errors import JobError
from turbobatch.models.lora import LORA_PIPELINES, resolve_loras, with_lora_sources
from turbobatch.models.resolve import resolve_model
from turbobatch.output.shard import Shard
from turbobatch.spec.resolved import ResolvedJob
from turbobatch.workers.actor import RenderWorker


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return {
        "sd_a": make_tiny_lora("tiny-sd-turbo", root / "sd_a", seed=1),
        "sd_b": make_tiny_lora("tiny-sd-turbo", root / "sd_b", seed=2, rank=2),
        "sdxl": make_tiny_lora("tiny-sdxl-turbo", root / "sdxl", seed=3),
        "z_a": make_tiny_lora("tiny-z-image-turbo", root / "z_a", seed=6),
        "z_b": make_tiny_lora("tiny-z-image-turbo", root / "z_b", seed=7, rank=2),
        "klein_a": make_tiny_lora("tiny-flux2-klein", root / "klein_a", seed=8),
        "klein_b": make_tiny_lora("tiny-flux2-klein", root / "klein_b", seed=9, rank=2),
    }


def job(model: str, lora, **kw) -> ResolvedJob:
    spec = ResolvedJob(input="in", output="out", model=model, lora=lora, **kw)
    spec.validate()
    return spec


def test_a_lora_for_the_model_passes_the_header_check(loras):
    spec = job("tiny-sd-turbo", [f"a={loras['sd_a']}:0.5", f"b={loras['sd_b'].parent}"])
    [a, b] = resolve_loras(spec, resolve_model("tiny-sd-turbo"))
    assert (a.name, a.scale, a.weight_name) == ("a", 0.5, "pytorch_lora_weights.safetensors")
    sources = with_lora_sources(spec, [a, b]).sources
    assert sources["lora:a"]["files"] and sources["lora:b"]["weight_name"] == "pytorch_lora_weights.safetensors"


def test_a_lora_for_another_base_model_stops_the_job_naming_lora_model_and_module(loras):
    spec = job("tiny-sd-turbo", [f"xl={loras['sdxl']}"])
    with pytest.raises(JobError) as e:
        resolve_loras(spec, resolve_model("tiny-sd-turbo"))
    text = str(e.value)
    assert "'xl'" in text and "'tiny-sd-turbo'" in text and "first mismatch at unet." in text


@pytest.mark.parametrize(
    "model, lora, where",
    [("tiny-flux2-klein", "z_a", "transformer.context_refiner."), ("tiny-z-image-turbo", "klein_a", "transformer.")],
)
def test_a_transformer_lora_for_another_family_stops_the_job(loras, model, lora, where):
    with pytest.raises(JobError) as e:
        resolve_loras(job(model, [f"other={loras[lora]}"]), resolve_model(model))
    text = str(e.value)
    assert f"'other' ({loras[lora]})" in text and f"--model {model!r}" in text
    assert f"first mismatch at {where}" in text and "the model has no module transformer." in text


def test_transformer_loras_for_the_model_pass_the_header_check(loras):
    for model, lora in (("tiny-z-image-turbo", "z_a"), ("tiny-flux2-klein", "klein_a")):
        [info] = resolve_loras(job(model, [f"{loras[lora]}:0.5"]), resolve_model(model))
        assert (info.name, info.scale) == (lora, 0.5)


def test_a_pipeline_diffusers_loads_no_loras_into_is_a_job_error(loras):
    model = dataclasses.replace(resolve_model("tiny-sd-turbo"), pipeline_class="SomeOtherPipeline")
    with pytest.raises(JobError, match=r"'tiny-sd-turbo' is a SomeOtherPipeline, which diffusers loads no LoRAs"):
        resolve_loras(job("tiny-sd-turbo", [str(loras["sd_a"])]), model)


def test_lora_pipelines_are_the_ones_diffusers_loads_loras_into():
    """The table says what diffusers' loader mixins say: each class loads LoRAs, into those components."""
    import diffusers

    for name, components in LORA_PIPELINES.items():
        cls = getattr(diffusers, name)
        assert hasattr(cls, "load_lora_weights"), name
        assert set(components) == set(cls._lora_loadable_modules), name


def test_a_folder_with_several_weight_files_asks_for_the_file(loras, tmp_path):
    make_tiny_lora("tiny-sd-turbo", tmp_path, seed=4, file_name="one.safetensors")
    make_tiny_lora("tiny-sd-turbo", tmp_path, seed=5, file_name="two.safetensors")
    with pytest.raises(JobError, match="2 top-level .safetensors files"):
        resolve_loras(job("tiny-sd-turbo", [str(tmp_path)]), resolve_model("tiny-sd-turbo"))
    [one] = resolve_loras(job("tiny-sd-turbo", [f"{tmp_path}/one.safetensors"]), resolve_model("tiny-sd-turbo"))
    assert one.weight_name == "one.safetensors"


def render(tmp_path, model, prompts, **kw):
    columns = {"prompt": prompts, **kw.pop("columns", {})}
    data = write_parquet(tmp_path / "p.parquet", columns)
    n = len(prompts)
    spec = spec_for(tmp_path, data, model=model, shard_size=n, batch_size=8, **kw)
    spec.validate()  # normalizes --lora as the driver does
    RenderWorker(spec).render_shard(Shard(0, f"file://{data}", 0, n, 0, 9))
    return read_metadata(tmp_path / "out"), read_tar_images(tmp_path / "out")


@pytest.mark.parametrize(
    "model, lora",
    [
        ("tiny-sd-turbo", "sd_a"),
        ("tiny-sdxl-turbo", "sdxl"),
        ("tiny-z-image-turbo", "z_a"),
        ("tiny-flux2-klein", "klein_a"),
    ],
)
def test_one_lora_fused_matches_load_lora_weights_and_fuse_lora(tmp_path, loras, model, lora):
    rows, images = render(tmp_path, model, ["a red fox", "a lighthouse"], lora=[f"{loras[lora]}:0.7"], steps=1)
    pipe = plain_pipeline(model)
    base = [plain_image(pipe, r["prompt"], r["seed"]) for r in rows]
    pipe.load_lora_weights(str(loras[lora].parent), adapter_name="x")
    pipe.fuse_lora(lora_scale=0.7)
    for row, without in zip(rows, base):
        assert row["lora"] == f"{lora}={loras[lora]}:0.7"
        expected = plain_image(pipe, row["prompt"], row["seed"])
        assert_within_one_level(images[row["key"]], expected, row["key"])
        assert np.abs(expected.astype(int) - without.astype(int)).max() > 1  # the LoRA changes the image


def test_two_loras_fused_as_set_adapters_then_fuse_lora(tmp_path, loras):
    rows, images = render(
        tmp_path, "tiny-sd-turbo", ["a red fox"], lora=[f"a={loras['sd_a']}:0.5", f"b={loras['sd_b']}:-0.8"]
    )
    pipe = plain_pipeline("tiny-sd-turbo")
    pipe.load_lora_weights(str(loras["sd_a"].parent), adapter_name="a")
    pipe.load_lora_weights(str(loras["sd_b"].parent), adapter_name="b")
    pipe.set_adapters(["a", "b"], [0.5, -0.8])
    pipe.fuse_lora(adapter_names=["a", "b"])
    [row] = rows
    assert_within_one_level(images[row["key"]], plain_image(pipe, row["prompt"], row["seed"]), row["key"])


@pytest.mark.parametrize(
    "model, pair", [("tiny-sd-turbo", "sd"), ("tiny-z-image-turbo", "z"), ("tiny-flux2-klein", "klein")]
)
def test_lora_column_rows_match_per_lora_plain_calls(tmp_path, loras, model, pair):
    """A mixed dataset: rows pick a, b or none in any order; each image is a plain diffusers call
    with that adapter set (or LoRA disabled), within 1 level."""
    picks = ["a", None, "b", "a", "b", None, "a", "nope"]
    prompts = [f"prompt {i}" for i in range(len(picks))]
    a, b = loras[f"{pair}_a"], loras[f"{pair}_b"]
    rows, images = render(
        tmp_path,
        model,
        prompts,
        lora=[f"a={a}:0.9", f"b={b}:0.6"],
        lora_column="style",
        columns={"style": picks},
        steps=1,
    )
    assert [r["status"] for r in rows] == ["ok"] * 7 + ["error"]
    assert "'nope' is not one of the job's LoRAs (a, b)" in rows[7]["error"]
    assert [r["lora"] for r in rows[:3]] == [f"a={a}:0.9", None, f"b={b}:0.6"]
    pipe = plain_pipeline(model)
    pipe.load_lora_weights(str(a.parent), adapter_name="a")
    pipe.load_lora_weights(str(b.parent), adapter_name="b")
    scales = {"a": 0.9, "b": 0.6}
    for row, pick in zip(rows[:7], picks):
        if pick is None:
            pipe.disable_lora()
        else:
            pipe.enable_lora()
            pipe.set_adapters([pick], [scales[pick]])
        assert_within_one_level(images[row["key"]], plain_image(pipe, row["prompt"], row["seed"]), row["key"])
    # the adapters matter: the same prompt and seed under a, b and none make three images
    pipe.enable_lora()
    row = rows[0]
    made = []
    for adapters, scale in ((["a"], [0.9]), (["b"], [0.6])):
        pipe.set_adapters(adapters, scale)
        made.append(plain_image(pipe, row["prompt"], row["seed"]))
    pipe.disable_lora()
    made.append(plain_image(pipe, row["prompt"], row["seed"]))
    assert len({m.tobytes() for m in made}) == 3
