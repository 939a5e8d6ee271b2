"""An output inside its input (issue 24): the run's own files would become its input, so the job is refused
before anything is written, in a run and in its dry run, on a local disk and on S3."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs

from tests.conftest import s3_options, write_parquet
from turbobatch.errors import JobError
from turbobatch.jobs.cli import render_main as main
from turbobatch.jobs.prepare.inputs import check_output_apart
from turbobatch.output.storage import Folder

TINY = ["--model", "tiny-sd-turbo", "--height", "32", "--width", "32", "--shard-size", "2"]


def tree(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Every path below ``root``, folders included, with size and mtime: what "left as it was" compares."""
    return {
        str(p.relative_to(root)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
    }


def prompts(tmp_path: Path) -> Path:
    folder = tmp_path / "prompts"
    write_parquet(folder / "part-0.parquet", {"prompt": ["a fox", "a lighthouse", "a boat"]})
    return folder


def render(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = main([*argv, *TINY])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize(
    "input_, output, why",
    [
        ("{p}", "{p}/out", "output: {output} lies inside the input {input}"),
        ("{p}/", "{p}/out/", "output: {output} lies inside the input {input}"),
        ("{p}", "{p}", "output: {output} is the input {input}"),
        ("{p}/", "{p}", "output: {output} is the input {input}"),
        ("{p}/part-0.parquet", "{p}/part-0.parquet", "output: {output} is the input {input}"),
        ("{p}/**/*.parquet", "{p}/out", "output: the input glob {input} matches files the run writes in {output}"),
        ("{p}/**", "{p}/deep/er/out", "output: the input glob {input} matches files the run writes in {output}"),
        ("{p}/*/*/*.parquet", "{p}/out", "output: the input glob {input} matches files the run writes in {output}"),
        ("{p}/out/metadata", "{p}/out", "output: the input {input} lies among the files the run writes in {output}"),
    ],
)
def test_an_output_the_input_would_read_is_refused_before_anything_is_written(
    tmp_path, capsys, input_, output, why, dry_run
):
    folder = prompts(tmp_path)
    input_, output = input_.format(p=folder), output.format(p=folder)
    before = tree(tmp_path)
    rc, err = render(capsys, input_, output, *(["--dry-run"] if dry_run else []))
    assert rc == 2, err
    assert why.format(input=input_, output=output.rstrip("/")) in err
    assert "the run's own files (" in err and "would become its input. Use an output folder outside the input." in err
    assert tree(tmp_path) == before  # nothing written: no output folder, no probe, no _job/


def test_the_same_folder_spelled_otherwise_is_the_same_folder(tmp_path, capsys, monkeypatch):
    folder = prompts(tmp_path)
    (tmp_path / "link").symlink_to(folder)
    monkeypatch.chdir(tmp_path)
    for input_, output in (
        ("prompts", "./prompts/../prompts/out"),
        (str(tmp_path / "link"), str(folder / "out")),
        (f"file://{folder}", "prompts/out"),
    ):
        rc, err = render(capsys, input_, output)
        assert rc == 2 and f"lies inside the input {input_}" in err, (input_, output, err)
    assert not (folder / "out").exists()


def test_an_output_left_inside_the_input_is_refused_not_read_and_not_deleted(tmp_path, capsys):
    """Before this check `render prompts/ prompts/out` ran once; its rerun then stopped with "input added:
    out/metadata/000000.parquet", and with --overwrite deleted the output and planned its metadata as prompts.
    Now the rerun names the real problem and touches nothing, with or without --overwrite."""
    folder = prompts(tmp_path)
    old = folder / "out"
    write_parquet(old / "metadata" / "000000.parquet", {"key": ["0", "1"], "prompt": ["a fox", "a lighthouse"]})
    (old / "_done").mkdir()
    (old / "_done" / "000000.json").write_text(json.dumps({"shard": 0}))
    (old / "_job").mkdir()
    (old / "_job" / "spec.json").write_text("{}")
    before = tree(tmp_path)
    for extra in ([], ["--overwrite"], ["--overwrite", "--dry-run"]):
        rc, err = render(capsys, str(folder), str(old), *extra)
        assert rc == 2, err
        assert f"output: {old} lies inside the input {folder}" in err and "input added" not in err
        assert tree(tmp_path) == before, extra


@pytest.mark.parametrize(
    "input_, output",
    [
        ("{d}/prompts.parquet", "{d}/out"),  # a file next to the output
        ("{d}/*.parquet", "{d}/out"),  # one level: the run writes nothing directly in OUT as *.parquet
        ("{d}/*/*.parquet", "{d}/out"),  # two levels: OUT/README.md is not *.parquet
        ("{d}/prompts", "{d}/prompts-out"),  # a longer name is not a subfolder
        ("{d}/out/prompts", "{d}/out"),  # the input among the user's files in OUT, not among the run's
        ("{d}/[o]ut/**", "{d}/[o]ut"),  # "[o]" is a set in the input glob: it names {d}/out, not this folder
    ],
)
def test_an_input_the_run_cannot_write_into_is_fine(tmp_path, input_, output):
    check_output_apart(input_.format(d=tmp_path), {}, Folder(output.format(d=tmp_path)))


def test_the_output_folder_name_is_taken_literally(tmp_path):
    with pytest.raises(JobError, match="the input glob .* matches files the run writes in"):
        check_output_apart(f"{tmp_path}/[o]ut/**", {}, Folder(f"{tmp_path}/out"))


# -- S3 (moto's server on 127.0.0.1) ------------------------------------------------------------
def upload_prompts(fs: s3fs.S3FileSystem, bucket: str) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.table({"prompt": ["a fox", "a boat"]}), buf)
    fs.pipe(f"{bucket}/prompts/part-0.parquet", buf.getvalue())


def objects(fs: s3fs.S3FileSystem, bucket: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    return {path: fs.cat_file(path) for path in fs.find(bucket)}


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize(
    "input_, output, why",
    [
        ("s3://{b}/prompts/", "s3://{b}/prompts/out", "lies inside the input"),
        ("s3://{b}/prompts", "s3://{b}/prompts/", "is the input"),
        ("s3a://{b}/prompts", "s3://{b}/prompts/out", "lies inside the input"),
        ("s3://{b}/prompts/**", "s3://{b}/prompts/out", "matches files the run writes in"),
    ],
)
def test_on_s3_an_output_inside_the_input_is_refused(s3_endpoint, s3_bucket, capsys, input_, output, why, dry_run):
    options = s3_options(s3_endpoint)
    fs = s3fs.S3FileSystem(**options)
    upload_prompts(fs, s3_bucket)
    before = objects(fs, s3_bucket)
    input_, output = input_.format(b=s3_bucket), output.format(b=s3_bucket)
    rc, err = render(
        capsys, input_, output, "--storage-options", json.dumps(options), *(["--dry-run"] if dry_run else [])
    )
    assert rc == 2, err
    assert why in err and input_ in err and output.rstrip("/") in err and "would become its input" in err
    assert objects(fs, s3_bucket) == before  # not even the write probe


def test_on_s3_a_glob_next_to_the_output_or_another_store_is_fine(s3_endpoint, s3_bucket, tmp_path):
    options = s3_options(s3_endpoint)
    check_output_apart(f"s3://{s3_bucket}/prompts/*.parquet", options, Folder(f"s3://{s3_bucket}/prompts/out", options))
    other = s3_options("http://127.0.0.1:1")  # the same bucket and key on another server
    check_output_apart(f"s3://{s3_bucket}/prompts/", other, Folder(f"s3://{s3_bucket}/prompts/out", options))
    check_output_apart(f"s3://{s3_bucket}/prompts/", options, Folder(f"{tmp_path}/{s3_bucket}/prompts/out"))
    with pytest.raises(JobError, match=f"output: s3://{s3_bucket}/prompts/out lies inside the input"):
        check_output_apart(f"s3://{s3_bucket}/prompts/", options, Folder(f"s3://{s3_bucket}/prompts/out", options))
