"""End to end: turbobatch render on a real local Ray, real Parquet files, the tiny model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from tests.conftest import REPO, write_parquet
from tests.helpers import assert_within_one_level, plain_diffusers_image, read_metadata, read_tar_images
from turbobatch.jobs.cli import render_main as main
from turbobatch.output import layout

pytestmark = pytest.mark.slow
SIZE = ["--height", "48", "--width", "40"]


@pytest.fixture
def dataset(tmp_path) -> Path:
    """Three files with odd row groups; some seeds given, some null, one bad; one null prompt."""
    root = tmp_path / "data"
    write_parquet(
        root / "part-0.parquet",
        {
            "prompt": ["a red fox", "", "日本の桜 🎨", None, "a lighthouse", "x", "tab\tnewline\n"],
            "seed": pa.array([None, 11, None, None, -5, 2**40, None], pa.int64()),
        },
        row_group_size=3,
    )
    write_parquet(
        root / "part-1.parquet",
        {"prompt": [f"prompt {i} " * (i + 1) for i in range(13)], "seed": pa.array([None] * 13, pa.int64())},
        row_group_size=5,
    )
    write_parquet(root / "part-2.parquet", {"prompt": ["the last row"], "seed": pa.array([7], pa.int64())})
    return root


def render(*argv: str) -> int:
    return main([*map(str, argv)])


def test_every_row_once_resume_and_determinism(ray_cluster, dataset, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    args = [dataset, out, "--model", "tiny-sd-turbo", "--shard-size", "4", "--workers", "2", *SIZE]
    assert render(*args) == 0
    assert "shards: 7/7 committed" in capsys.readouterr().out

    # Every input row exactly once, in metadata, with an honest status.
    rows = read_metadata(out)
    assert [r["global_index"] for r in rows] == list(range(21))
    assert len({r["key"] for r in rows}) == 21
    errors = {r["global_index"]: r["error"] for r in rows if r["status"] == "error"}
    assert errors == {3: "prompt is null", 4: "seed -5 is outside [0, 2**63)"}
    seeds = {r["global_index"]: r["seed"] for r in rows}
    assert (seeds[0], seeds[1], seeds[5], seeds[20], seeds[9]) == (0, 11, 2**40, 7, 9)
    markers = [json.loads(p.read_text()) for p in sorted((out / "_done").glob("*.json"))]
    assert [m["rows"] for m in markers] == [4, 3, 4, 4, 4, 1, 1]
    assert sum(m["ok"] for m in markers) == 19

    # Tar members decode as images of the requested size, one per ok row.
    images = read_tar_images(out)
    assert sorted(images) == sorted(r["key"] for r in rows if r["status"] == "ok")
    assert {img.shape for img in images.values()} == {(48, 40, 3)}

    # A row's image is what a plain diffusers call with its generator gives, within 1 level
    # (each of the 2 actors on this 2-CPU Ray got num_cpus=1; the plain call runs 1 thread too).
    from diffusers import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for r in (rows[1], rows[2], rows[20]):
            expected = plain_diffusers_image(pipe, r["prompt"], r["seed"], 48, 40)
            assert_within_one_level(images[r["key"]], expected, r["key"])
    finally:
        torch.set_num_threads(threads)

    # Resume: deleting two done markers redoes exactly those shards.
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    digests = {r["key"]: r["sha256"] for r in rows}
    for sid in (1, 5):
        (out / layout.done_path(sid)).unlink()
    assert render(*args) == 0
    assert "shards: 7/7 committed (2 this run, 5 before" in capsys.readouterr().out
    after = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    assert sorted(n for n in after if after[n] != before[n]) == ["000001.tar", "000005.tar"]
    assert {r["key"]: r["sha256"] for r in read_metadata(out)} == digests

    # Nothing left to do: a third run renders nothing.
    assert render(*args) == 0
    assert "(0 this run, 7 before" in capsys.readouterr().out


def test_a_moved_dataset_resumes_as_the_same_input(ray_cluster, dataset, tmp_path, capsys):
    """`ray job submit --working-dir .` unpacks a relative INPUT into a new folder at every
    submission: inputs are compared by their path below INPUT, size and rows, not full URLs."""
    out = tmp_path / "out"
    assert render(dataset, out, "--model", "tiny-sd-turbo", "--shard-size", "10", *SIZE) == 0
    moved = tmp_path / "elsewhere" / "data"
    shutil.copytree(dataset, moved)
    capsys.readouterr()
    assert render(moved, out, "--model", "tiny-sd-turbo", "--shard-size", "10", *SIZE) == 0
    assert "shards: 4/4 committed (0 this run, 4 before" in capsys.readouterr().out
    (moved / "part-2.parquet").rename(moved / "part-9.parquet")  # a renamed file is another input
    assert render(moved, out, "--model", "tiny-sd-turbo", "--shard-size", "10", *SIZE) == 2
    err = capsys.readouterr().err
    assert "input removed: part-2.parquet" in err and "input added: part-9.parquet" in err


def test_changed_options_or_inputs_stop_unless_overwrite(ray_cluster, dataset, tmp_path, capsys):
    out = tmp_path / "out"
    args = [dataset, out, "--model", "tiny-sd-turbo", "--shard-size", "10", *SIZE]
    assert render(*args) == 0
    assert render(*args, "--steps", "2") == 2
    assert "--steps: 1 -> 2" in capsys.readouterr().err
    write_parquet(dataset / "part-3.parquet", {"prompt": ["new"]})
    assert render(*args) == 2
    assert "input added: part-3.parquet" in capsys.readouterr().err
    (out / "metadata" / "notes.txt").write_text("a user's file in one of turbobatch's folders")
    assert render(*args, "--steps", "2", "--overwrite") == 0
    assert (
        f"turbobatch: --overwrite: removed 4 done markers, 4 metadata files, 4 tar shards, _job/ from {out}; "
        "kept 1 file(s) that turbobatch does not write: metadata/notes.txt\n"
    ) in capsys.readouterr().err
    assert (out / "metadata" / "notes.txt").exists()
    assert {r["steps"] for r in read_metadata(out)} == {2}
    assert len(read_metadata(out)) == 22


def test_config_file_key_column_and_files_format(ray_cluster, tmp_path):
    data = write_parquet(tmp_path / "p.parquet", {"text": ["one", "two", "three"], "id": ["a/1", "b", "c"]})
    config = tmp_path / "job.yaml"
    config.write_text(
        f"input: {data}\noutput: {tmp_path / 'out'}\nmodel: tiny-sd-turbo\nprompt_column: text\n"
        "key_column: id\nformat: files\nimage-format: webp\nquality: 70\nheight: 32\nwidth: 32\n"
    )
    assert render("--config", config, "--seed", "5") == 0
    rows = read_metadata(tmp_path / "out")
    assert [(r["key"], r["seed"], r["image"]) for r in rows] == [
        ("a_1", 5, "images/000000/a_1.webp"),
        ("b", 6, "images/000000/b.webp"),
        ("c", 7, "images/000000/c.webp"),
    ]
    assert all((tmp_path / "out" / r["image"]).exists() for r in rows)


def _bad_inputs(tmp_path: Path) -> dict[str, Path]:
    good = write_parquet(tmp_path / "good.parquet", {"prompt": ["x", "y"]})
    no_prompt = write_parquet(tmp_path / "noprompt.parquet", {"caption": ["x"]})
    empty = write_parquet(tmp_path / "empty.parquet", {"prompt": pa.array([], pa.string())})
    not_parquet = tmp_path / "prompts.csv"
    not_parquet.write_text("prompt\nhello\n")
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    return {"good": good, "no_prompt": no_prompt, "empty": empty, "csv": not_parquet, "blocker": blocker}


@pytest.mark.parametrize(
    "case, extra, message",
    [
        ("no_prompt", [], "--prompt-column: column 'prompt' is not in"),
        ("csv", [], "is not a readable Parquet file"),
        ("empty", [], "has no rows"),
        ("unwritable", [], "output: cannot write to"),
        ("good", ["--model", "nobody/no-such-model"], "--model: cannot load 'nobody/no-such-model'"),
        ("good", ["--steps", "0"], "--steps: 0 is out of range"),
        ("good", ["--workers", "3"], "--workers: 3 actors need 3 CPUs; the Ray cluster has 2"),
        ("good", ["--dtype", "float16"], "--dtype: float16 needs CUDA"),
        ("good", ["--device", "cpu", "--dtype", "float16"], "--dtype: float16 needs CUDA"),
        ("good", ["--seed-column", "s"], "--seed-column: column 's' is not in"),
        ("good", ["--seed", str(2**63 - 1)], "would pass 2**63"),
    ],
)
def test_bad_jobs_fail_before_any_actor(ray_cluster, no_actors, tmp_path, capsys, case, extra, message):
    inputs = _bad_inputs(tmp_path)
    output = inputs["blocker"] / "out" if case == "unwritable" else tmp_path / "out"
    source = inputs["good"] if case == "unwritable" else inputs[case]
    model = [] if "--model" in extra else ["--model", "tiny-sd-turbo"]
    assert render(source, output, *model, *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # the write probe (step 1) left nothing, even for a step-4 error


def test_cli_entry_points_document_every_option():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for cmd in (
        [sys.executable, "-m", "turbobatch", "render", "--help"],
        [str(Path(sys.executable).parent / "turbobatch"), "render", "--help"],
    ):
        text = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
        for flag in (
            "--model",
            "--steps",
            "--guidance-scale",
            "--height",
            "--width",
            "--batch-size",
            "--dtype",
            "--workers",
            "--shard-size",
            "--format",
            "--image-format",
            "--quality",
            "--seed",
            "--prompt-column",
            "--negative-prompt-column",
            "--seed-column",
            "--key-column",
            "--config",
            "--device",
            "--overwrite",
            "--max-retries",
            "--max-failed-shards",
            "--variant",
            "--images-per-prompt",
            "--prompt-template",
            "--sweep",
            "--steps-column",
            "--guidance-scale-column",
            "--width-column",
            "--height-column",
        ):
            assert flag in text, (cmd, flag)


def test_driver_starts_and_stops_its_own_ray(tmp_path):
    """As `make demo` runs it: a fresh process, no Ray running for it, the example prompts."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "turbobatch",
            "render",
            str(REPO / "examples" / "prompts.parquet"),
            str(tmp_path / "demo"),
            "--model",
            "tiny-sd-turbo",
            "--shard-size",
            "25",
            "--height",
            "32",
            "--width",
            "32",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "shards: 2/2 committed" in result.stdout
    assert "images this run: 49 ok, 1 error" in result.stdout


def test_a_model_that_fails_to_load_in_the_actor_is_a_clear_error(ray_cluster, tmp_path, tiny_model_dir, capsys):
    """Configs pass the driver's check, but the weights are broken: the actors cannot start."""
    import shutil

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    for weights in (broken / "unet").glob("*.safetensors"):
        weights.write_bytes(b"not safetensors")
    data = write_parquet(tmp_path / "p.parquet", {"prompt": ["x"]})
    assert render(data, tmp_path / "out", "--model", broken, *SIZE) == 2
    err = capsys.readouterr().err
    assert "error: workers: the render actors could not start" in err
    assert not list((tmp_path / "out" / "_done").glob("*"))
