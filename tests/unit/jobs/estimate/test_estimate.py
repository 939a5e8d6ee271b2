"""The throughput table (jobs/estimate/throughput.json) and the estimate (jobs/estimate/estimate.py), without Ray."""

from __future__ import annotations

import dataclasses
import re
import tomllib

import pytest

from tests.conftest import REPO
from turbobatch.jobs.estimate import estimate as est
from turbobatch.spec.job import JobSpec

SD, SDXL = "StableDiffusionPipeline", "StableDiffusionXLPipeline"


def gpu_job(**kw) -> JobSpec:
    """A resolved GPU job (as resolve_spec leaves it)."""
    values = dict(
        input="in",
        output="out",
        device="cuda",
        dtype="float16",
        height=512,
        width=512,
        workers=8,
        worker_gpus=1,
        worker_cpus=1,
        batch_size=16,
    )
    values.update(kw)
    resolved = {k: values.pop(k) for k in ("worker_gpus", "worker_cpus")}  # the driver's, as resolve_spec sets them
    spec = JobSpec(**values)
    spec.validate()
    return dataclasses.replace(spec, **resolved)


def figure(spec: JobSpec, pipeline=SD, vae=None, kind="NVIDIA H200") -> est.Figure:
    [(share, setting)] = est.job_settings(spec, pipeline, vae, kind)
    return est.figure_for(setting)


def test_the_measured_h200_figures_come_back_as_measured_and_name_the_previous_worker():
    cases = [
        (gpu_job(), SD, None, 53.2),
        (gpu_job(model="stabilityai/sdxl-turbo"), SDXL, None, 45.8),
        (gpu_job(vae="madebyollin/taesd"), SD, "AutoencoderTiny", 129.8),
        (gpu_job(model="stabilityai/sdxl-turbo", vae="madebyollin/taesdxl"), SDXL, "AutoencoderTiny", 90.4),
    ]
    for spec, pipeline, vae, images_per_s in cases:
        f = figure(spec, pipeline, vae, kind="H200")  # Ray's accelerator type names the same card
        assert f.images_per_s == images_per_s and f.measured, (spec.model, spec.vae, f)
        assert f.basis.startswith("measured for") and "2026-11-26" in f.basis
        assert f.notes == [
            "the figure is the previous worker's (the current worker has not been measured on a GPU yet)"
        ]
    # The estimate changes with the model and the decoder.
    assert len({figure(s, p, v).images_per_s for s, p, v, _ in cases}) == 4


def test_unmeasured_steps_size_and_guidance_are_scaled_by_flops_and_named():
    one = figure(gpu_job())
    two = figure(gpu_job(steps=2))
    flops = est.load_table()["flops_per_image_512"]["sd"]
    one_step = flops["text_encoders"] + flops["unet"] + flops["decode"]["vae"]
    assert two.images_per_s == pytest.approx(53.2 * one_step / (one_step + flops["unet"]))
    assert not two.measured and any("not measured: 2 step(s) (measured: 1)" in n for n in two.notes), two.notes
    big = figure(gpu_job(height=768, width=768))
    assert big.images_per_s < one.images_per_s and any("768x768 (measured: 512x512)" in n for n in big.notes)
    cfg = figure(gpu_job(guidance_scale=5.0))
    assert cfg.images_per_s < one.images_per_s and any("guidance 5 (two UNet passes)" in n for n in cfg.notes)
    control = figure(gpu_job(controlnet="c", control_image_column="img"))
    assert control.images_per_s < one.images_per_s and any("a ControlNet" in n for n in control.notes)


def test_what_cannot_be_scaled_is_used_as_measured_and_said_so():
    a10g = figure(gpu_job(), kind="NVIDIA A10G")
    assert a10g.images_per_s == 53.2 and not a10g.measured
    assert any(
        "GPU kind NVIDIA A10G (measured: NVIDIA H200); the measured figure used as it is" in n for n in a10g.notes
    ), a10g.notes
    batch = figure(gpu_job(batch_size=8, dtype="bfloat16"))
    assert batch.images_per_s == 53.2
    assert any("bfloat16 (measured: float16), batch size 8 (measured: 16)" in n for n in batch.notes), batch.notes
    other = figure(gpu_job(model="/models/my-finetune"), SDXL)  # an unknown model: its pipeline's architecture
    assert other.images_per_s == 45.8
    assert any(
        n.startswith(
            "model /models/my-finetune: not measured; used stabilityai/sdxl-turbo's figure (the same architecture)"
        )
        for n in other.notes
    ), other.notes


def test_no_figure_for_a_full_size_model_on_cpu_and_the_estimate_says_so():
    cpu = gpu_job(device="cpu", dtype="float32", worker_gpus=0, worker_cpus=2, workers=1)
    e = est.estimate(cpu, SD, None, 1000, 1, "cpu")
    assert e.parts[0][2] is None and e.wall_s is None
    text = "\n".join(est.format_estimate(e))
    assert "no figure (the table has none for stabilityai/sd-turbo on cpu" in text and "--calibrate" in text


def test_wall_time_gpu_hours_and_cost():
    e = est.estimate(gpu_job(), SD, None, images=10_000_000, shards=10_000, device_kind="NVIDIA H200", price=2.5)
    wall = 10_000_000 / (8 * 53.2)
    assert e.wall_s == pytest.approx(wall) and e.gpu_hours == pytest.approx(wall * 8 / 3600)
    assert e.cost == pytest.approx(wall * 8 / 3600 * 2.5)
    text = "\n".join(est.format_estimate(e))
    assert "10,000,000 images on 8 worker(s): 6.5 h of rendering, 52.21 GPU-hours" in text
    assert "cost:     130.53 at 2.5 per GPU-hour" in text
    half = est.estimate(gpu_job(worker_gpus=0.5), SD, None, 10_000_000, 10_000, "NVIDIA H200")
    assert half.gpu_hours == pytest.approx(e.gpu_hours / 2)  # two actors share a GPU (not measured: same speed)
    few = est.estimate(gpu_job(), SD, None, images=3000, shards=3, device_kind="NVIDIA H200")
    assert few.workers == 3  # no more actors than shards


def test_a_sweep_is_estimated_per_combination_and_per_row_columns_are_named():
    e = est.estimate(gpu_job(sweep={"steps": [1, 4]}), SD, None, 1000, 1, "NVIDIA H200")
    assert [(n, s.steps) for n, s, _ in e.parts] == [(500, 1), (500, 4)]
    assert e.parts[1][2].images_per_s < e.parts[0][2].images_per_s
    e = est.estimate(gpu_job(steps_column="st"), SD, None, 1000, 1, "NVIDIA H200")
    assert any("steps per row from column 'st': not read by the dry run" in n for n in e.unmeasured)


def test_the_table_is_built_from_docs_benchmarks_and_ships_with_the_package():
    benchmarks = (REPO / "docs" / "BENCHMARKS.md").read_text()
    table = est.load_table()
    for row in table["figures"]:
        assert row["measured"] and row["date"] and row["worker"] and "docs/BENCHMARKS.md" in row["source"]
        assert row["model"] in table["models"]
        if row["device_kind"] != "cpu":
            assert f"{row['images_per_s']}" in benchmarks, row
            assert "previous worker" in row["worker"]
    for family in ("sd", "sdxl", "z-image", "flux2-klein"):
        for value in (
            table["flops_per_image_512"][family]["text_encoders"],
            table["flops_per_image_512"][family]["unet"],
        ):
            assert re.search(rf"\b{value:.3f} TFLOP\b", benchmarks), value
    assert "jobs/estimate/throughput.json" in benchmarks  # BENCHMARKS says where the table lives and how to extend it
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "throughput.json" in package_data["turbobatch.jobs.estimate"]


def test_what_the_estimate_prints_names_versions_and_dates_not_issue_numbers():
    """The table's words reach users (the dry run's speed line): the project's issue numbers mean nothing to them."""
    table = est.load_table()
    for row in table["figures"]:
        for name in ("worker", "source", "weights"):
            assert not re.search(r"\bissues? *#?\d", row[name], re.IGNORECASE), row[name]
    e = est.estimate(gpu_job(), SD, None, 1000, 1, "NVIDIA H200")
    cpu = gpu_job(model="tiny-sd-turbo", device="cpu", dtype="float32", worker_gpus=0, worker_cpus=2, workers=1)
    text = "\n".join(est.format_estimate(e) + est.format_estimate(est.estimate(cpu, SD, None, 100, 1, "cpu")))
    assert "2026-11-26" in text and "2026-12-01" in text
    assert not re.search(r"\bissues? *#?\d", text, re.IGNORECASE), text


def test_a_transformer_family_is_derived_from_another_architecture_by_its_own_flops():
    """Z-Image-Turbo at its defaults (1024², 8 steps, guidance 0) has no measured figure: sd-turbo's is
    scaled by the FLOPs of each (counted at 1024² for the DiTs), and the estimate says so."""
    z = gpu_job(model="Tongyi-MAI/Z-Image-Turbo", height=1024, width=1024, steps=8, dtype="bfloat16")
    f = figure(z, "ZImagePipeline")
    flops = est.load_table()["flops_per_image_512"]
    sd = flops["sd"]["text_encoders"] + flops["sd"]["unet"] + flops["sd"]["decode"]["vae"]
    zi = flops["z-image"]
    assert f.images_per_s == pytest.approx(53.2 * sd / (zi["text_encoders"] + 8 * zi["unet"] + zi["decode"]["vae"]))
    assert 0.1 < f.images_per_s < 1  # ~490 TFLOP per image
    assert any("model Tongyi-MAI/Z-Image-Turbo: not measured" in n and "another architecture" in n for n in f.notes)


def test_guidance_counts_two_passes_as_each_family_decides():
    """Z-Image guides above 0 (ZImagePipeline), the others above 1."""
    assert est.uses_cfg("z-image", 0.5) and not est.uses_cfg("z-image", 0.0)
    assert not est.uses_cfg("flux2-klein", 1.0) and not est.uses_cfg("sd", 0.5) and est.uses_cfg("sd", 1.5)
    row = {"width": 1024, "height": 1024, "steps": 8, "decoder": "vae"}
    one, two = (est.tflop_per_image({**row, "guidance_scale": g}, "z-image") for g in (0.0, 0.5))
    zi = est.load_table()["flops_per_image_512"]["z-image"]
    assert two - one == pytest.approx(zi["text_encoders"] + 8 * zi["unet"])
