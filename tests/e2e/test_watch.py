"""The real-Ray half of tests/unit/jobs/inspect/test_watch.py: what only a running cluster shows."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, write_parquet
from tests.helpers import kill_session
from turbobatch import faults
from turbobatch.jobs.inspect.status import job_status
from turbobatch.output.storage import Folder


@pytest.mark.slow
def test_watch_follows_a_job_in_another_process_until_it_ends(tmp_path):
    prompts = write_parquet(tmp_path / "in" / "prompts.parquet", {"prompt": [f"prompt {i}" for i in range(16)]})
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the job starts its own local Ray
    job = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "turbobatch",
            "render",
            str(prompts),
            str(out),
            "--model",
            "tiny-sd-turbo",
            "--height",
            "32",
            "--width",
            "32",
            "--shard-size",
            "2",
            "--workers",
            "1",
        ],
        env={**env, faults.ENV: json.dumps({"delay_s": 0.3})},  # 0.6 s per shard of 2
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        watch = subprocess.run(
            [sys.executable, "-m", "turbobatch", "status", str(out), "--watch", "0.5", "--json"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=240,
        )
        _, job_err = job.communicate(timeout=120)
    finally:
        kill_session(job.pid)
    assert job.returncode == 0, job_err[-3000:]
    assert watch.returncode == 0, watch.stderr[-3000:]
    lines = [json.loads(text) for text in watch.stdout.splitlines()]
    assert lines[0]["state"] == "waiting"  # started before the job planned
    planned = [line for line in lines if line["state"] != "waiting"]
    committed = [line["shards"]["committed"] for line in planned]
    assert committed == sorted(committed), committed  # counts never go down
    assert len({c for c in committed if 0 < c < 8}) >= 2, committed  # seen rising while the job ran
    assert [line["state"] for line in planned].count("ended") == 1 and planned[-1]["state"] == "ended"
    assert any(line["images_per_s"] and line["eta_s"] > 0 for line in planned), planned  # a rate and ETA mid-job
    final = job_status(Folder(str(out)))
    assert planned[-1]["shards"] == final["shards"] == {"total": 8, "committed": 8, "failed": 0, "pending": 0}
    assert planned[-1]["images"] == final["images"] and final["images"]["ok"] == 16
