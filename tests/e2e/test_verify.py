"""``turbobatch verify OUT``: committed shards against their markers, orphans, and --repair."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import s3fs

from tests.conftest import REPO, s3_options, write_parquet
from tests.helpers import read_metadata
from turbobatch.jobs.cli import main as turbobatch
from turbobatch.jobs.cli import render_main as render
from turbobatch.jobs.inspect.verify import main as verify

pytestmark = pytest.mark.slow
SMALL = ["--model", "tiny-sd-turbo", "--height", "32", "--width", "32", "--shard-size", "4"]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    """16 rows, 4 shards; row 1 is an error row."""
    return write_parquet(
        tmp_path_factory.mktemp("in") / "p.parquet", {"prompt": [None if i == 1 else f"thing {i}" for i in range(16)]}
    )


@pytest.fixture(scope="module")
def rendered(ray_cluster, prompts, tmp_path_factory):
    """One good output per format, rendered once; tests damage copies of it."""
    made: dict[str, Path] = {}

    def output(fmt: str) -> Path:
        if fmt not in made:
            made[fmt] = tmp_path_factory.mktemp(fmt) / "out"
            assert render([str(prompts), str(made[fmt]), *SMALL, "--format", fmt]) == 0
        return made[fmt]

    return output


def copy_of(rendered, fmt: str, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(rendered(fmt), out)
    return out


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def report_of(out: Path, capsys, *extra: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = verify([str(out), "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def problems(report: dict) -> dict[int, list[str]]:
    return {b["shard"]: b["problems"] for b in report["broken"]}


def test_a_good_output_verifies(rendered, tmp_path, capsys):
    out = copy_of(rendered, "tar", tmp_path)
    code, report = report_of(out, capsys)
    assert (code, report["ok"], report["committed"], report["broken"], report["orphans"]) == (0, True, 4, [], [])
    assert turbobatch(["verify", str(out)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("\nok")
    module = subprocess.run(
        [sys.executable, "-m", "turbobatch", "verify", str(out)], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert module.returncode == 0, module.stderr
    assert module.stdout.rstrip().endswith("\nok")  # printed before the exit that skips teardown


def test_the_installed_command_exits_with_the_commands_code_and_its_output_flushed(rendered, tmp_path):
    """`turbobatch verify|status` end without the interpreter's teardown (jobs.cli.console_main):
    their output must still reach a pipe whole, and their exit codes stay the commands'."""
    out = copy_of(rendered, "tar", tmp_path)
    command = Path(sys.executable).parent / "turbobatch"
    for args, code, tail in (
        (["verify", str(out)], 0, "ok"),
        (["status", str(out), "--json"], 0, "}"),
        (["verify", str(tmp_path / "nothing")], 2, ""),
    ):
        result = subprocess.run([str(command), *args], capture_output=True, text=True, cwd=REPO, timeout=120)
        assert result.returncode == code, (args, result.stderr)
        assert result.stdout.rstrip().endswith(tail), (args, result.stdout[-300:])
    assert "is not a turbobatch output" in result.stderr


@pytest.mark.parametrize(
    "damage, shard, message",
    [
        (
            lambda out: (out / "shards/000001.tar").write_bytes((out / "shards/000001.tar").read_bytes()[:3000]),
            1,
            "shards/000001.tar: 3000 bytes, the done marker says",
        ),
        (lambda out: (out / "metadata/000002.parquet").unlink(), 2, "metadata/000002.parquet: missing"),
        (lambda out: flip_byte(out / "shards/000000.tar"), 0, "shards/000000.tar: sha256 "),
    ],
)
def test_each_damage_is_named_with_its_shard(rendered, tmp_path, capsys, damage, shard, message):
    out = copy_of(rendered, "tar", tmp_path)
    damage(out)
    code, report = report_of(out, capsys)
    assert code == 1 and not report["ok"] and report["orphans"] == []
    assert list(problems(report)) == [shard] and problems(report)[shard][0].startswith(message), report
    assert verify([str(out)]) == 1
    text = capsys.readouterr().out
    assert f"shard {shard}: {message}" in text and text.rstrip().endswith("NOT OK")


def test_an_orphan_tar_is_named(rendered, tmp_path, capsys):
    out = copy_of(rendered, "tar", tmp_path)
    shutil.copy(out / "shards/000000.tar", out / "shards/000009.tar")  # a dead run's shard: no done marker
    code, report = report_of(out, capsys)
    assert (code, report["broken"], report["orphans"]) == (1, [], ["shards/000009.tar"])


def test_repair_then_the_same_command_redoes_exactly_the_broken_shards(rendered, prompts, tmp_path, capsys):
    out = copy_of(rendered, "tar", tmp_path)
    digests = {r["key"]: r["sha256"] for r in read_metadata(out)}
    (out / "shards/000001.tar").write_bytes((out / "shards/000001.tar").read_bytes()[:3000])
    (out / "metadata/000002.parquet").unlink()
    flip_byte(out / "shards/000000.tar")
    shutil.copy(out / "shards/000003.tar", out / "shards/000009.tar")
    good = (out / "shards/000003.tar").stat().st_mtime_ns

    code, report = report_of(out, capsys, "--repair")
    assert code == 1 and report["repaired"]["markers_removed"] == [0, 1, 2]
    assert sorted(p.name for p in (out / "_done").iterdir()) == ["000003.json"]
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["000003.tar"]  # broken shards' objects and the orphan
    assert report_of(out, capsys)[0] == 0  # what is left is good: shards 0-2 are pending now

    assert render([str(prompts), str(out), *SMALL]) == 0
    assert "shards: 4/4 committed (3 this run, 1 before" in capsys.readouterr().out
    assert (out / "shards/000003.tar").stat().st_mtime_ns == good
    assert {r["key"]: r["sha256"] for r in read_metadata(out)} == digests
    assert report_of(out, capsys)[0] == 0


def test_files_format_checks_each_image_against_its_metadata(rendered, tmp_path, capsys):
    out = copy_of(rendered, "files", tmp_path)
    (out / "images/000000/000000000.png").unlink()
    flip_byte(out / "images/000002/000000008.png")
    (out / "images/000003/stray.png").write_bytes(b"x")  # not in the shard's metadata
    shutil.rmtree(out / "images/000001")
    (out / "_done/000001.json").unlink()  # shard 1 never committed, but its image folder is there
    (out / "images/000001").mkdir()
    (out / "images/000001/000000004.png").write_bytes(b"x")
    (out / "metadata/000001.parquet").unlink()
    code, report = report_of(out, capsys)
    assert code == 1
    assert problems(report) == {
        0: ["images/000000/000000000.png: missing", "images/000000: 2 images, the done marker says 3"],
        2: ["images/000002/000000008.png: sha256 differs from its metadata row's (changed or corrupted)"],
    }
    assert report["orphans"] == ["images/000001", "images/000003/stray.png"]
    verify([str(out), "--repair"])
    assert not (out / "images/000001").exists() and not (out / "images/000000").exists()
    assert sorted(p.name for p in (out / "images/000003").iterdir()) == [f"0000000{i}.png" for i in (12, 13, 14, 15)]


def test_parquet_format_checks_the_data_file(rendered, tmp_path, capsys):
    out = copy_of(rendered, "parquet", tmp_path)
    assert report_of(out, capsys)[0] == 0
    flip_byte(out / "data/000003.parquet")
    code, report = report_of(out, capsys)
    assert code == 1 and list(problems(report)) == [3]
    assert problems(report)[3][0].startswith("data/000003.parquet: sha256 ")


def test_a_folder_that_is_not_an_output(tmp_path, capsys):
    assert verify([str(tmp_path)]) == 2
    assert "is not a turbobatch output" in capsys.readouterr().err


def test_verify_and_repair_on_s3_after_a_sync(rendered, tmp_path, s3_endpoint, s3_bucket, capsys):
    """The output synced to a bucket, one object damaged on the way and one left from elsewhere."""
    options = s3_options(s3_endpoint)
    fs = s3fs.S3FileSystem(**options)
    fs.put(str(rendered("tar")) + "/", f"{s3_bucket}/out/", recursive=True)
    url, args = f"s3://{s3_bucket}/out", ["--storage-options", json.dumps(options)]
    assert verify([url, *args]) == 0
    data = bytearray(fs.cat_file(f"{s3_bucket}/out/shards/000002.tar"))
    data[1000] ^= 0xFF
    fs.pipe(f"{s3_bucket}/out/shards/000002.tar", bytes(data))
    fs.pipe(f"{s3_bucket}/out/metadata/000007.parquet", b"left by another job")
    capsys.readouterr()
    assert verify([url, "--json", *args]) == 1
    report = json.loads(capsys.readouterr().out)
    assert list(problems(report)) == [2] and report["orphans"] == ["metadata/000007.parquet"]
    assert verify([url, "--repair", *args]) == 1
    fs.invalidate_cache()
    assert not fs.exists(f"{s3_bucket}/out/_done/000002.json")
    assert not fs.exists(f"{s3_bucket}/out/metadata/000007.parquet")
    assert fs.exists(f"{s3_bucket}/out/shards/000003.tar")
    assert verify([url, *args]) == 0
