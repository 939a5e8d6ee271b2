"""End to end: several images per prompt, prompt templates, sweeps and per-row sampling columns,
through turbobatch render on a real local Ray, with the tiny model; then resume and a killed driver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from tests.conftest import REPO, write_parquet
from tests.helpers import (
    assert_complete_and_clean,
    assert_within_one_level,
    image_digests,
    kill_driver_mid_run,
    metadata_without_timings,
    read_metadata,
    read_tar_images,
)
from turbobatch import faults
from turbobatch.jobs.cli import render_main as main
from turbobatch.jobs.inspect.status import main as status
from turbobatch.jobs.inspect.verify import main as verify
from turbobatch.output import layout

pytestmark = pytest.mark.slow
# 4 rows x 2 sweep sizes x 2 step counts x 2 images per prompt = 32 images, shards of 5 cut rows.
GRID = [
    "--model",
    "tiny-sd-turbo",
    "--height",
    "32",
    "--width",
    "32",
    "--shard-size",
    "5",
    "--seed",
    "50",
    "--prompt-template",
    "a {style} photo of a {subject}",
    "--images-per-prompt",
    "2",
    "--sweep",
    "width=32,48",
    "--sweep",
    "steps=1,2",
    "--guidance-scale-column",
    "g",
    "--keep-columns",
    "style",
]


@pytest.fixture
def subjects(tmp_path) -> Path:
    """No prompt column: the template makes the prompts. Row 2's subject is null (its 8 images are
    error rows), row 3's guidance is out of range (its 8 too); row 1 has its own seed and guidance."""
    return write_parquet(
        tmp_path / "in" / "subjects.parquet",
        {
            "subject": ["fox", "cat", None, "owl"],
            "style": ["ink", "oil", "chalk", "wax"],
            "seed": pa.array([None, 7, None, None], pa.int64()),
            "g": pa.array([None, 2.0, None, 500.0], pa.float64()),
        },
    )


def render(*argv) -> int:
    return main([*map(str, argv)])


def tar_members(path: Path) -> list[tuple[str, bytes | dict]]:
    """A tar's members in order: image bytes as written, json without render_ms (a timing)."""
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    return [
        (name, {k: v for k, v in json.loads(data).items() if k != "render_ms"} if name.endswith(".json") else data)
        for name, data in members
    ]


def test_a_sweep_renders_every_image_as_its_metadata_says_and_resumes_exactly(
    ray_cluster, subjects, tmp_path, tiny_model_dir, capsys
):
    out = tmp_path / "out"
    assert render(subjects, out, *GRID, "--workers", "2") == 0
    log = capsys.readouterr()
    assert "4 rows in 1 file(s) x 8 images per row = 32 images -> 7 shards" in log.err
    assert "shards: 7/7 committed" in log.out and "images this run: 16 ok, 16 error" in log.out

    rows = read_metadata(out)
    assert len(rows) == 32 and len({r["key"] for r in rows}) == 32
    # The documented order: row, then combination (width, then steps: the last name fastest), then j.
    combos = [(32, 1), (32, 2), (48, 1), (48, 2)]
    assert [(r["global_index"], r["combination"], r["image_index"]) for r in rows] == [
        (g, c, j) for g in range(4) for c in range(4) for j in range(2)
    ]
    assert [(r["sweep_width"], r["sweep_steps"]) for r in rows] == [
        combos[c] for g in range(4) for c in range(4) for j in range(2)
    ]
    assert all(
        (r["width"], r["steps"], r["height"]) == (r["sweep_width"], r["sweep_steps"], 32)
        for r in rows
        if r["global_index"] != 3
    )
    assert [r["key"] for r in rows[:3]] == ["000000000_0_0", "000000000_0_1", "000000000_1_0"]
    # Seeds: job seed + g * N + j, or the row's own + j; the same for every combination of a row and j.
    assert {(r["global_index"], r["image_index"], r["seed"]) for r in rows} == {
        (0, 0, 50),
        (0, 1, 51),
        (1, 0, 7),
        (1, 1, 8),
        (2, 0, 54),
        (2, 1, 55),
        (3, 0, 56),
        (3, 1, 57),
    }
    assert {r["guidance_scale"] for r in rows if r["global_index"] in (0, 2)} == {0.0}  # null: the job's
    assert {r["guidance_scale"] for r in rows if r["global_index"] == 1} == {2.0}
    assert {r["template"] for r in rows} == {"a {style} photo of a {subject}"}
    assert rows[0]["prompt"] == "a ink photo of a fox" and rows[8]["prompt"] == "a oil photo of a cat"
    assert [r["style"] for r in rows] == [
        s for s in ("ink", "oil", "chalk", "wax") for _ in range(8)
    ]  # kept, per image
    errors = {r["global_index"]: r["error"] for r in rows if r["status"] == "error"}
    assert errors == {
        2: "prompt template: field {subject} is null in this row",
        3: "guidance_scale column 'g': 500.0 is out of range; expected a number in [0.0, 100.0]",
    }
    assert [r["status"] for r in rows].count("error") == 16  # 8 per bad row: one per image it would make
    assert {r["guidance_scale"] for r in rows if r["global_index"] == 3} == {None}  # not the job's value

    # Images have the recorded size, and are what a plain diffusers call with the recorded
    # prompt, seed and parameters gives (each actor has 1 CPU; so does the plain call).
    images = read_tar_images(out)
    assert sorted(images) == sorted(r["key"] for r in rows if r["status"] == "ok")
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(images[r["key"]].shape == (r["height"], r["width"], 3) for r in ok)
    from diffusers import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for r in [r for r in ok if r["image_index"] == 1]:  # row 0 and row 1 (guided), every combination
            plain = pipe(
                r["prompt"],
                num_inference_steps=r["steps"],
                guidance_scale=r["guidance_scale"],
                height=r["height"],
                width=r["width"],
                generator=torch.Generator("cpu").manual_seed(r["seed"]),
                output_type="np",
            ).images[0]
            assert_within_one_level(images[r["key"]], (plain * 255).round().astype(np.uint8), r["key"])
    finally:
        torch.set_num_threads(threads)
    same_noise = [images[r["key"]] for r in ok if r["global_index"] == 0 and r["image_index"] == 0 and r["width"] == 32]
    assert not np.array_equal(*same_noise)  # 1 and 2 steps from one seed: the sweep changed the image

    # Status, verify and the card count images.
    capsys.readouterr()
    assert status([str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["input_rows"], report["images_per_row"]) == (4, 8) and "rows" not in report
    assert report["images"] == {"total": 32, "ok": 16, "error": 16, "in_failed_shards": 0, "pending": 0}
    assert verify([str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "8 per input row (2 images per prompt x 4 sweep combinations of width, steps)" in card
    assert "--sweep width=32,48 --sweep steps=1,2" in card

    # Resume: deleting the done markers of two shards (each cuts a row in two) redoes exactly
    # those shards, byte for byte.
    plan = json.loads((out / layout.PLAN).read_text())
    assert plan["num_images"] == 32 and len(json.dumps(plan)) < 3000  # per shard, never per image
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    tars = {p.name: tar_members(p) for p in (out / "shards").iterdir()}
    for sid in (1, 3):
        (out / layout.done_path(sid)).unlink()
    capsys.readouterr()
    assert render(subjects, out, *GRID, "--workers", "2") == 0
    assert "shards: 7/7 committed (2 this run, 5 before" in capsys.readouterr().out
    after = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    assert sorted(n for n in after if after[n] != before[n]) == ["000001.tar", "000003.tar"]
    assert {p.name: tar_members(p) for p in (out / "shards").iterdir()} == tars  # the same members, in order
    assert metadata_without_timings(out) == [{k: v for k, v in r.items() if k != "render_ms"} for r in rows]

    # A changed sweep is a changed job.
    changed = [a if a != "steps=1,2" else "steps=1,3" for a in GRID]
    assert render(subjects, out, *changed) == 2
    assert "--sweep: [['width', [32, 48]], ['steps', [1, 2]]] -> [['width', [32, 48]], ['steps', [1, 3]]]" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--prompt-template", "a {style} photo of a {animal}"],
            "--prompt-template: field {animal} names no column of file://",
        ),
        (["--prompt-template", "a {style} {subject}", "--sweep", "medium=ink"], "--sweep: unknown name 'medium'"),
        (["--sweep", "steps=1,200"], "--sweep steps: 200 is out of range; expected an integer in [1, 100]"),
        (["--sweep", "width="], "--sweep width: the list of values is empty"),
        (
            ["--prompt-template", "{style} {subject}", "--sweep", "style=a,b"],
            "--sweep: 'style' is also a column of file://",
        ),
        (
            ["--prompt-template", "{subject}", "--sweep", "steps=1,2", "--steps-column", "g"],
            "--steps-column: 'g' and --sweep steps both set steps",
        ),
        (["--prompt-template", "{subject}", "--width-column", "w"], "--width-column: column 'w' is not in file://"),
        (["--prompt-template", "{subject}", "--images-per-prompt", "0"], "--images-per-prompt: 0 is out of range"),
        (
            ["--prompt-template", "{subject}", "--images-per-prompt", str(2**62), "--seed", "0"],
            "--images-per-prompt: 4611686018427387904 is out of range",
        ),
        (
            ["--prompt-template", "{subject}", "--images-per-prompt", "100000", "--seed", str(2**63 - 300_000)],
            "rows x 100000 images per prompt would pass 2**63",
        ),
        ([], "--prompt-column: column 'prompt' is not in file://"),  # no template: the prompt column is needed
    ],
)
def test_bad_expansions_fail_before_any_actor(ray_cluster, no_actors, subjects, tmp_path, capsys, extra, message):
    assert render(subjects, tmp_path / "out", "--model", "tiny-sd-turbo", *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "_done").exists()


def test_a_killed_expanded_driver_is_finished_by_the_same_command(tmp_path):
    """SIGKILL the driver mid-run (its local Ray dies with it) and run the same command again: every
    image once, the bytes of an uninterrupted run."""
    prompts = write_parquet(tmp_path / "in" / "p.parquet", {"prompt": [f"thing {i}" for i in range(8)]})
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    args = [
        "--model",
        "tiny-sd-turbo",
        "--height",
        "32",
        "--width",
        "32",
        "--shard-size",
        "8",
        "--workers",
        "1",
        "--images-per-prompt",
        "3",
        "--sweep",
        "steps=1,2",
    ]  # 8 rows x 6 = 48 images, 6 shards

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "turbobatch", "render", str(prompts), str(out), *args]

    reference = tmp_path / "reference"
    first = subprocess.run(command(reference), env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]

    out = tmp_path / "out"
    slow_env = {**env, faults.ENV: json.dumps({"delay_s": 0.1})}  # per image: a shard takes ~1 s
    committed_before = kill_driver_mid_run(command(out), out, slow_env, REPO)
    assert 2 <= committed_before < 6

    again = subprocess.run(command(out), env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{committed_before} already committed" in again.stderr
    assert_complete_and_clean(out, 6, 8, images_per_row=6)
    assert image_digests(out) == image_digests(reference)
    assert metadata_without_timings(out) == metadata_without_timings(reference)
