"""``--dry-run`` and ``--calibrate`` (jobs/estimate/dryrun.py): the run's checks and plan, an estimate,
and nothing written to the output."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO
from turbobatch.jobs.cli import render_main as render
from turbobatch.jobs.estimate import dryrun
from turbobatch.jobs.prepare.inputs import scan_inputs
from turbobatch.spec.job import JobSpec

EXAMPLE = REPO / "examples" / "prompts.parquet"
TINY = ["--model", "tiny-sd-turbo", "--height", "32", "--width", "32", "--shard-size", "20"]


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``folder`` with its size and mtime: what 'nothing written' compares."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def dry_run(capsys, *args: str) -> tuple[int, str, str]:
    rc = render([str(EXAMPLE), *args, "--dry-run"])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def speed(text: str) -> float:
    return float(re.search(r"^speed: +([\d,.]+) images/s per worker", text, re.MULTILINE).group(1).replace(",", ""))


def test_the_cluster_described_holds_one_actor_per_worker_of_its_kind():
    spec = JobSpec(input="in", output="out", device="cuda", workers=4, worker_gpus=0.5)
    cluster = dryrun.described_cluster(spec, " H100 ")
    assert cluster.gpus == 2 and cluster.cpus == 4 and not cluster.local and len(cluster.nodes) == 4
    assert cluster.nodes[0] == {"CPU": 1.0, "GPU": 0.5, "accelerator_type:H100": 1.0}
    for missing in (dict(device="cpu"), dict(workers=None), dict(device=None)):
        assert (
            dryrun.described_cluster(
                JobSpec(**{**dict(input="in", output="out", device="cuda", workers=4), **missing}), "H100"
            )
            is None
        )
    assert dryrun.described_cluster(spec, None) is None


def marker(ok: int, render_s: float) -> dict:
    return {"ok": ok, "error": 0, "timings_s": {"render": render_s}, "device_kind": "cpu"}


def test_a_few_images_are_not_enough_to_measure_and_the_next_round_asks_for_what_is_missing():
    """The report that started this: 2 images timed after a first batch of 8 gave 208 images/s."""
    m = dryrun.Measurement()
    m.add([marker(2, 0.0096)])
    assert not m.enough(batch_size=8)
    assert m.still_wanted(batch_size=8) >= 22  # the batches still missing, in whole batches
    m.add([marker(24, 0.5)])
    assert not m.enough(batch_size=8)  # 3 batches, but not 5 s
    wanted = m.still_wanted(batch_size=8)
    assert wanted % 8 == 0 and wanted >= m.images_per_s * (5.0 - m.seconds)
    m.add([marker(wanted, 5.0)])
    assert m.enough(batch_size=8) and m.pieces == 3
    assert m.describe(8).startswith(f"{m.images:,} images in {m.seconds:.1f} s of rendering after a warm-up batch of 8")


def test_calibration_pieces_are_the_jobs_first_images_cut_as_its_shards_and_repeated():
    files = scan_inputs(str(EXAMPLE))
    spec = JobSpec(input=str(EXAMPLE), output="out", shard_size=20)
    assert [p.num_images for p in dryrun.calibration_pieces(files, spec, 1, 8)] == [8]  # the warm-up batch
    assert [(p.image_start, p.image_end) for p in dryrun.calibration_pieces(files, spec, 1, 24)] == [(0, 20), (20, 40)]
    many = dryrun.calibration_pieces(files, spec, 1, 120)  # more than the job's 50 images: from the start again
    assert [p.num_images for p in many] == [20, 20, 10, 20, 20, 10, 20]
    assert many[3] == many[0]


def test_a_tiny_transformer_model_gets_an_estimate(capsys, tmp_path):
    """tiny-z-image-turbo has no measured figure of its own: the dry run prints one derived from the
    CPU figure by FLOPs per image, names the architecture it came from, and writes nothing."""
    out = tmp_path / "out"
    rc, text, _ = dry_run(capsys, str(out), "--model", "tiny-z-image-turbo")
    assert rc == 0 and not out.exists()
    assert "model:    tiny-z-image-turbo (ZImagePipeline), 64x64, 8 step(s)" in text
    assert 0 < speed(text) < 24  # 8 transformer steps: slower than tiny-sd-turbo's measured 24 images/s
    assert re.search(r"^estimate: 50 images on 1 worker\(s\): ", text, re.MULTILINE)
    assert "used tiny-sd-turbo's figure (another architecture" in text
