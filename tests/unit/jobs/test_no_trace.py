"""A job that fails its checks leaves the output as it found it (issue 24): not created when it did not
exist, nothing added when it did. Before, the write probe left an empty OUT/_job/, and `turbobatch status
OUT` then called the folder "not a turbobatch output (yet)"."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs

from tests.conftest import s3_options, write_parquet
from tests.unit.jobs.prepare.test_output_in_input import tree
from turbobatch.errors import JobError
from turbobatch.jobs.cli import render_main as main
from turbobatch.jobs.prepare import resume
from turbobatch.output.storage import Folder

TINY = ["--model", "tiny-sd-turbo", "--height", "32", "--width", "32"]
BAD_JOBS = {  # what is wrong -> (the input below tmp_path, extra flags, the error)
    "wrong prompt column": ("p.parquet", ["--prompt-column", "caption"], "--prompt-column: column 'caption' is not in"),
    "missing input": ("nope.parquet", [], "does not exist"),
    "bad model": ("p.parquet", ["--model", "nobody/no-such-model"], "--model: cannot load 'nobody/no-such-model'"),
}


def bad_job(tmp_path: Path, out: str, what: str, *extra: str) -> tuple[int, str]:
    write_parquet(tmp_path / "p.parquet", {"prompt": ["a fox", "a boat"]})
    source, flags, message = BAD_JOBS[what]
    return main([str(tmp_path / source), out, *TINY, *flags, *extra]), message


@pytest.mark.parametrize("what", BAD_JOBS)
def test_a_bad_job_does_not_create_its_output(tmp_path, capsys, what):
    out = tmp_path / "new" / "deeper" / "out"
    rc, message = bad_job(tmp_path, str(out), what)
    assert rc == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # neither OUT nor the folders above it that the probe made


@pytest.mark.parametrize("what", BAD_JOBS)
def test_a_bad_job_adds_nothing_to_an_existing_output(tmp_path, capsys, what):
    out = tmp_path / "out"
    (out / "_done").mkdir(parents=True)  # a folder another job left, and a user's file
    (out / "notes.txt").write_text("mine")
    before = tree(out)
    rc, message = bad_job(tmp_path, str(out), what)
    assert rc == 2 and message in capsys.readouterr().err
    assert tree(out) == before


def test_a_bad_job_adds_nothing_to_an_s3_output(s3_endpoint, s3_bucket, tmp_path, capsys):
    options = s3_options(s3_endpoint)
    fs = s3fs.S3FileSystem(**options)
    buf = io.BytesIO()
    pq.write_table(pa.table({"prompt": ["a fox"]}), buf)
    fs.pipe(f"{s3_bucket}/p.parquet", buf.getvalue())
    argv = [f"s3://{s3_bucket}/p.parquet", f"s3://{s3_bucket}/out", *TINY, "--storage-options", json.dumps(options)]
    assert main([*argv, "--prompt-column", "caption"]) == 2
    assert "--prompt-column: column 'caption' is not in" in capsys.readouterr().err
    fs.invalidate_cache()
    assert fs.find(s3_bucket) == [f"{s3_bucket}/p.parquet"]


def test_the_write_probe_still_fails_an_unwritable_output_and_cleans_up(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "blocker").write_text("")  # a file where a folder of the output path must go
    with pytest.raises(JobError, match="output: cannot write to"):
        resume.check_writable(Folder(str(tmp_path / "ro" / "blocker" / "out")))
    resume.check_writable(Folder(str(tmp_path / "a" / "b")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro"]  # a/b/_job made for the probe, then removed
