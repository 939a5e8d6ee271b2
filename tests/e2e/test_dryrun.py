"""The real-Ray half of tests/unit/jobs/estimate/test_dryrun.py: what only a running cluster shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, write_parquet
from tests.helpers import wait_for
from tests.raycluster import started_head, started_worker_node
from tests.unit.jobs.estimate.test_dryrun import EXAMPLE, TINY, dry_run, listing, speed
from turbobatch.jobs.cli import render_main as render


def test_dry_run_prints_the_plan_and_an_estimate_and_writes_nothing(ray_cluster, tmp_path, capsys):
    out = tmp_path / "out"
    rc, text, err = dry_run(capsys, str(out), *TINY)
    assert rc == 0, err
    assert not out.exists()  # not even the folder
    assert "turbobatch: dry run: nothing is written to the output and no render actor starts" in text
    assert "input:    50 rows in 1 file(s)" in text
    assert (
        "plan:     50 images (1 per row) in 3 shards of up to 20 images; 0 shards committed before, "
        "3 shards (50 images) to render" in text
    )
    assert f"output:   {out}: absent (the run creates it in {tmp_path}); writable" in text
    assert re.search(r"^estimate: 50 images on 1 worker\(s\): [\d.]+ s of rendering", text, re.MULTILINE), text
    # 32x32 and batch 8 were not measured for the tiny model on CPU: said so, and what stood in.
    assert re.search(r"^note: +not measured: .*32x32 \(measured: 64x64\)", text, re.MULTILINE), text


def test_the_estimate_changes_with_the_model_the_decoder_and_the_steps(ray_cluster, tmp_path, capsys):
    out = str(tmp_path / "out")
    base = ["--height", "32", "--width", "32"]
    runs = {
        "sd": ["--model", "tiny-sd-turbo", *base],
        "sdxl": ["--model", "tiny-sdxl-turbo", *base],
        "taesd": ["--model", "tiny-sd-turbo", "--vae", "tiny-taesd", *base],
        "4 steps": ["--model", "tiny-sd-turbo", "--steps", "4", *base],
    }
    speeds, texts = {}, {}
    for name, args in runs.items():
        rc, texts[name], err = dry_run(capsys, out, *args)
        assert rc == 0, (name, err)
        speeds[name] = speed(texts[name])
    assert len(set(speeds.values())) == 4, speeds
    assert speeds["taesd"] > speeds["sd"] > speeds["4 steps"] and speeds["sdxl"] < speeds["sd"], speeds
    assert "TAESD decoder" in texts["taesd"] and "the TAESD decoder (measured: VAE)" in texts["taesd"]
    assert "4 step(s) (measured: 1)" in texts["4 steps"]
    assert "model tiny-sdxl-turbo: not measured" in texts["sdxl"]
    assert not Path(out).exists()


def test_dry_run_of_a_resumed_output_counts_what_is_left_and_touches_nothing(ray_cluster, tmp_path, capsys):
    data = write_parquet(tmp_path / "in.parquet", {"prompt": [f"p {i}" for i in range(12)]})
    out = tmp_path / "out"
    small = ["--model", "tiny-sd-turbo", "--height", "32", "--width", "32", "--shard-size", "4"]
    assert render([str(data), str(out), *small]) == 0
    (out / "_done" / "000001.json").unlink()
    before = listing(out)
    capsys.readouterr()
    assert render([str(data), str(out), *small, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "2 shards committed before, 1 shards (4 images) to render" in text
    assert "estimate: 4 images on 1 worker(s)" in text
    assert listing(out) == before
    # A changed job is refused by the dry run as by the run, naming what changed, and still writes nothing.
    assert render([str(data), str(out), *small, "--steps", "2", "--dry-run"]) == 2
    assert "steps" in capsys.readouterr().err
    assert listing(out) == before


def test_a_bad_job_stops_the_dry_run_as_it_stops_a_run(ray_cluster, tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = dry_run(capsys, str(out), *TINY, "--prompt-column", "caption")
    assert rc == 2 and "caption" in err and not out.exists()
    rc, _, err = dry_run(capsys, str(out), *TINY, "--gpu-hour-price", "-1")
    assert rc == 2 and "--gpu-hour-price: -1.0 is not valid" in err
    assert render([str(EXAMPLE), str(out), *TINY, "--gpu-hour-price", "2"]) == 2  # without --dry-run
    assert "--gpu-hour-price: applies to --dry-run and --calibrate" in capsys.readouterr().err
    assert not out.exists()


def test_calibrate_measures_batches_and_seconds_after_a_warm_up_and_says_how_much(ray_cluster, tmp_path, capsys):
    out = tmp_path / "out"
    temp_before = set(Path("/tmp").glob("turbobatch-calibrate-*"))
    rc = render([str(EXAMPLE), str(out), *TINY, "--calibrate"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert not out.exists()
    assert "one render actor renders the job's first images into a temporary folder (--calibrate)" in text
    measured = re.search(
        r"^measured: ([\d,.]+) images/s on one worker \(cpu\): ([\d,]+) images in ([\d.]+) s of "
        r"rendering after a warm-up batch of 8",
        text,
        re.MULTILINE,
    )
    assert measured, text
    images, seconds = int(measured.group(2).replace(",", "")), float(measured.group(3))
    # At least 3 batches of 8 and 5 s after the warm-up: the 50-row example is rendered more than once.
    assert images >= 3 * 8 and seconds >= 5.0, text
    assert float(measured.group(1).replace(",", "")) == pytest.approx(images / seconds, rel=0.02)
    assert speed(text) == pytest.approx(float(measured.group(1).replace(",", "")), rel=0.01)
    assert (
        f"calibrated: one worker on this cluster (cpu), {images:,} images in {seconds:.1f} s; the table's "
        "figure was" in text
    )
    assert set(Path("/tmp").glob("turbobatch-calibrate-*")) == temp_before  # its temporary folder is gone


def test_a_plan_for_a_cluster_not_started_yet_is_estimated_for_the_cluster_described(
    ray_cluster, tmp_path, capsys, no_actors
):
    """A laptop's local Ray (2 CPUs, no GPU) cannot place 64 H100 workers: the dry run estimates for
    them and says so; without --gpu-kind, and for a real run, it stops as before."""
    data = write_parquet(tmp_path / "in.parquet", {"prompt": [f"p {i}" for i in range(1000)]})
    out = tmp_path / "out"
    job = [
        str(data),
        str(out),
        "--model",
        "stabilityai/sd-turbo",
        "--weights",
        "random",
        "--device",
        "cuda",
        "--workers",
        "64",
        "--shard-size",
        "10",
    ]
    assert render([*job, "--dry-run", "--gpu-kind", "H100", "--gpu-hour-price", "2"]) == 0
    text = capsys.readouterr().out
    assert "estimated for the cluster described: 64 worker(s) of H100" in text, text
    assert re.search(
        r"could not place them: a local Ray, which cannot grow, with 0 GPU\(s\) and 2 CPU\(s\) in 1 "
        r"node\(s\)\. A run there stops: --workers: 64 actors need 64 GPUs",
        text,
    ), text
    hours = re.search(r"estimate: 1,000 images on 64 worker\(s\): ([\d.]+) s of rendering, ([\d.]+) GPU-hours", text)
    assert hours, text
    wall = max(1000 / (64 * 53.2), 10 / 53.2)  # the H200 figure, used as it is for an H100 (and said so)
    assert float(hours.group(1)) == pytest.approx(wall, abs=0.05)
    assert "GPU kind H100 (measured: NVIDIA H200)" in text
    assert re.search(r"^cost: +[\d.]+ at 2 per GPU-hour", text, re.MULTILINE), text
    assert not out.exists()
    # Without the GPU kind there is no cluster described: the dry run stops, saying how to plan.
    assert render([*job, "--dry-run"]) == 2
    assert "--workers: 64 actors need 64 GPUs" in (err := capsys.readouterr().err) and "--gpu-kind KIND" in err
    # A run (and a calibration, which renders) still stops as it did.
    assert render(job) == 2
    assert "--workers: 64 actors need 64 GPUs" in capsys.readouterr().err
    assert render([*job, "--calibrate", "--gpu-kind", "H100"]) == 2
    assert "--workers: 64 actors need 64 GPUs" in capsys.readouterr().err
    assert not list(out.rglob("*.*"))  # the run stopped at step 4: nothing but its write probe's folders


@pytest.mark.slow
def test_a_gpu_job_is_estimated_for_the_clusters_gpu_kind_with_its_cost(tmp_path):
    """A real cluster whose raylet declares a (logical) H200: the dry run reads the GPU kind from
    Ray's accelerator_type resource, estimates from the table's H200 figures, prices the GPU-hours,
    and starts no actor (the node has no device to start one on)."""
    out = tmp_path / "out"
    with (
        started_head(num_cpus=1) as head,
        started_worker_node(head, num_cpus=2, num_gpus=2, resources={"accelerator_type:H200": 2}),
    ):
        wait_for(lambda: "/2.0 GPU" in head.ray("status", "--address", head.gcs_address), 60, "the GPU node")
        env = {**head.env, "RAY_ADDRESS": head.gcs_address, "TURBOBATCH_CACHE": os.environ["TURBOBATCH_CACHE"]}
        texts = {}
        for model in ("stabilityai/sd-turbo", "stabilityai/sdxl-turbo"):
            command = [
                sys.executable,
                "-m",
                "turbobatch",
                "render",
                str(EXAMPLE),
                str(out),
                "--model",
                model,
                "--weights",
                "random",
                "--device",
                "cuda",
                "--workers",
                "4",
                "--shard-size",
                "10",
                "--gpu-hour-price",
                "2.5",
                "--dry-run",
            ]
            result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, result.stderr[-3000:]
            texts[model] = result.stdout
    sd, sdxl = texts["stabilityai/sd-turbo"], texts["stabilityai/sdxl-turbo"]
    assert (
        "workers:  up to 4 cuda render actor(s) of {'CPU': 1, 'GPU': 1} (rendering starts with 1); the "
        "cluster has room for 2 now" in sd
    )
    assert "speed:    53.20 images/s per worker" in sd and "speed:    45.80 images/s per worker" in sdxl
    assert "2026-11-26" in sd and "previous worker" in sd  # which measurement, and that it predates issue 14
    wall = 50 / (4 * 53.2)  # 5 shards over 4 workers: the busiest renders 2 of them
    wall = max(wall, 10 / 53.2)
    hours = re.search(r"estimate: 50 images on 4 worker\(s\): ([\d.]+) s of rendering, ([\d.]+) GPU-hours", sd)
    assert hours and float(hours.group(1)) == pytest.approx(wall, abs=0.05), sd
    cost = re.search(r"^cost: +([\d.]+) at 2.5 per GPU-hour", sd, re.MULTILINE)
    assert cost and float(cost.group(1)) == pytest.approx(float(hours.group(2)) * 2.5, abs=0.01), sd
    assert not out.exists()
