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
