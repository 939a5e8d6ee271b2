"""End to end on local Ray for both turbo families, with and without a ControlNet."""

from __future__ import annotations

import pytest

from tests.conftest import write_parquet
from tests.helpers import read_metadata, read_tar_images
from tests.unit.workers.test_control import control_png
from turbobatch.jobs.cli import render_main as main

pytestmark = pytest.mark.slow


@pytest.fixture
def dataset(tmp_path):
    (tmp_path / "data" / "ctrl").mkdir(parents=True)
    for name, seed in (("a.png", 1), ("b.png", 2)):
        (tmp_path / "data" / "ctrl" / name).write_bytes(control_png(seed))
    write_parquet(
        tmp_path / "data" / "p.parquet",
        {
            "prompt": ["a cat", "a dog", "a fox", "an owl"],
            "ctrl": ["ctrl/a.png", "ctrl/b.png", "ctrl/nope.png", "ctrl/a.png"],
        },
    )
    return tmp_path / "data"


@pytest.mark.parametrize(
    "model, controlnet",
    [
        ("tiny-sd-turbo", None),
        ("tiny-sd-turbo", "tiny-sd-controlnet"),
        ("tiny-sdxl-turbo", None),
        ("tiny-sdxl-turbo", "tiny-sdxl-controlnet"),
    ],
)
def test_each_family_renders_with_and_without_controlnet(ray_cluster, dataset, tmp_path, model, controlnet):
    extra = (
        ["--controlnet", controlnet, "--control-image-column", "ctrl", "--control-preprocess", "canny"]
        if controlnet
        else []
    )
    out = tmp_path / "out"
    assert (
        main([str(dataset), str(out), "--model", model, "--height", "32", "--width", "32", "--shard-size", "2", *extra])
        == 0
    )
    rows = read_metadata(out)
    assert [r["global_index"] for r in rows] == [0, 1, 2, 3]
    expected = ["ok", "ok", "error", "ok"] if controlnet else ["ok"] * 4
    assert [r["status"] for r in rows] == expected
    assert {img.shape for img in read_tar_images(out).values()} == {(32, 32, 3)}
    assert {r["controlnet"] for r in rows} == {controlnet}


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--model", "tiny-sdxl-turbo", "--controlnet", "tiny-sd-controlnet", "--control-image-column", "ctrl"],
            "--controlnet: 'tiny-sd-controlnet' was made for SD 1.x/2.x models",
        ),
        (
            ["--model", "tiny-sd-turbo", "--controlnet", "tiny-sdxl-controlnet", "--control-image-column", "ctrl"],
            "--controlnet: 'tiny-sdxl-controlnet' was made for SDXL models",
        ),
        (["--model", "tiny-sd-turbo", "--controlnet", "tiny-sd-controlnet"], "--control-image-column: required"),
        (
            ["--model", "tiny-sd-turbo", "--controlnet", "tiny-sd-controlnet", "--control-image-column", "nope"],
            "--control-image-column: column 'nope' is not in",
        ),
        (["--model", "tiny-sd-turbo", "--vae", "/does/not/exist"], "--vae: cannot load '/does/not/exist'"),
        (
            ["--model", "tiny-sd-turbo", "--vae", "tiny-sd-controlnet"],
            "--vae: 'tiny-sd-controlnet' is a ControlNetModel",
        ),
    ],
)
def test_mismatches_fail_before_any_actor(ray_cluster, no_actors, dataset, tmp_path, capsys, extra, message):
    assert main([str(dataset), str(tmp_path / "out"), *extra]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("model, steps, guidance", [("tiny-z-image-turbo", 8, 0.0), ("tiny-flux2-klein", 4, 1.0)])
def test_each_dit_family_renders_the_whole_job_with_its_own_defaults(
    ray_cluster, dataset, tmp_path, model, steps, guidance
):
    """Naming only the model: its card's steps and guidance; images, metadata and done markers out;
    a rerun resumes with nothing left to do."""
    out = tmp_path / "out"
    args = [str(dataset), str(out), "--model", model, "--height", "32", "--width", "32", "--shard-size", "2"]
    assert main(args) == 0
    rows = read_metadata(out)
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert {(r["steps"], r["guidance_scale"], r["model"]) for r in rows} == {(steps, guidance, model)}
    images = read_tar_images(out)
    assert {img.shape for img in images.values()} == {(32, 32, 3)} and len(images) == 4
    assert sorted(p.name for p in (out / "_done").iterdir()) == ["000000.json", "000001.json"]
    assert main(args) == 0  # resume: both shards committed, nothing rendered again
    again = read_tar_images(out)
    assert again.keys() == images.keys() and all((again[k] == v).all() for k, v in images.items())
