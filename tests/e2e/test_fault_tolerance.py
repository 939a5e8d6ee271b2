"""Kill anything mid-run, lose nothing, write nothing twice: with real processes.

An actor's process is SIGKILLed by PID mid-shard; a driver subprocess is SIGKILLed and its
command run again; a shard's data is really corrupt; an S3 PUT really gets a 503. Each time
the committed output must equal an uninterrupted run's, byte for byte, every row once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, write_parquet
from tests.helpers import (
    assert_complete_and_clean,
    corrupt_parquet,
    done_count,
    image_digests,
    kill_driver_mid_run,
    kill_session,
    metadata_without_timings,
    processes_titled,
    read_metadata,
    wait_for,
)
from turbobatch import faults
from turbobatch.jobs.cli import render_main as main
from turbobatch.jobs.run import retry

pytestmark = pytest.mark.slow
SMALL = ["--model", "tiny-sd-turbo", "--height", "32", "--width", "32", "--shard-size", "4"]
PROMPTS = [f"prompt {i} 🎨" if i % 5 else "" for i in range(24)]  # 6 shards


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    return write_parquet(tmp_path / "in" / "prompts.parquet", {"prompt": PROMPTS}, row_group_size=7)


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(retry, "RETRY_BASE_S", 0.2)


def test_an_actor_killed_mid_shard_has_its_shards_requeued(
    ray_cluster, prompts, tmp_path, fast_retries, monkeypatch, capsys
):
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert main([str(prompts), str(reference), *SMALL, "--workers", "2"]) == 0

    # Every row now takes 0.4 s in the pipeline (actors read the variable when they start).
    monkeypatch.setenv(faults.ENV, json.dumps({"delay_s": 0.4}))
    result: dict[str, int] = {}
    driver = threading.Thread(
        target=lambda: result.setdefault("rc", main([str(prompts), str(out), *SMALL, "--workers", "2"]))
    )
    driver.start()
    wait_for(lambda: done_count(out) >= 1, 120, "a first committed shard")
    ours = os.getpid()  # this test's Ray (ray_cluster) runs below this process
    wait_for(
        lambda: processes_titled("ray::RenderWorker.render_shard", ancestor=ours), 30, "an actor inside render_shard"
    )
    victim = processes_titled("ray::RenderWorker.render_shard", ancestor=ours)[0]
    os.kill(victim, signal.SIGKILL)
    killed_at = done_count(out)
    driver.join(300)

    assert result.get("rc") == 0
    assert killed_at < 6, "the kill landed after every shard was committed"
    err = capsys.readouterr().err
    assert "a render worker died; starting a replacement" in err
    assert "retry 1/3" in err
    assert_complete_and_clean(out, 6, len(PROMPTS))
    assert image_digests(out) == image_digests(reference)
    assert metadata_without_timings(out) == metadata_without_timings(reference)


def test_a_killed_driver_is_finished_by_the_same_command(prompts, tmp_path):
    """SIGKILL the driver (its own local Ray dies with it), run the same command again."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "turbobatch", "render", str(prompts), str(out), *SMALL, "--workers", "1"]

    reference = tmp_path / "reference"
    first = subprocess.run(command(reference), env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]

    out = tmp_path / "out"
    slow_env = {**env, faults.ENV: json.dumps({"delay_s": 0.25})}
    committed_before = kill_driver_mid_run(command(out), out, slow_env, REPO, timeout=180)
    assert 2 <= committed_before < 6

    again = subprocess.run(command(out), env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{committed_before} already committed" in again.stderr
    assert_complete_and_clean(out, 6, len(PROMPTS))
    assert image_digests(out) == image_digests(reference)
    assert metadata_without_timings(out) == metadata_without_timings(reference)


def test_sigterm_stops_the_driver_cleanly_and_the_same_command_resumes(prompts, tmp_path):
    """SIGTERM is what `ray job stop` and Kubernetes send: the driver says how to resume, exits
    143, and its actors are gone (nothing is committed after it exits)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = tmp_path / "out"
    command = [sys.executable, "-m", "turbobatch", "render", str(prompts), str(out), *SMALL, "--workers", "1"]
    slow_env = {**env, faults.ENV: json.dumps({"delay_s": 0.25})}
    driver = subprocess.Popen(
        command,
        env=slow_env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(lambda: done_count(out) >= 1, 180, "a committed shard")
        driver.send_signal(signal.SIGTERM)
        _, err = driver.communicate(timeout=60)
        assert driver.returncode == 143, err[-3000:]
        assert "terminated: committed shards are kept; run the same command again to resume" in err
        committed = done_count(out)
        time.sleep(3)  # an actor left alive would commit its in-flight shard meanwhile
        assert done_count(out) == committed < 6
    finally:
        kill_session(driver.pid)

    again = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{committed} already committed" in again.stderr
    assert_complete_and_clean(out, 6, len(PROMPTS))


def test_bad_data_fails_its_shard_once_and_a_rerun_retries_it(ray_cluster, tmp_path, capsys):
    data = tmp_path / "data"
    write_parquet(data / "a.parquet", {"prompt": [f"good {i}" for i in range(8)]})
    bad = corrupt_parquet(data / "b.parquet", [f"corrupted {i}" for i in range(4)])
    out = tmp_path / "out"
    argv = [str(data), str(out), *SMALL]

    assert main(argv) == 1  # more failed shards than --max-failed-shards 0
    captured = capsys.readouterr()
    assert "failed shard 2 (after 1 attempt(s))" in captured.out
    assert "retry" not in captured.err  # bad data is never retried
    failed = json.loads((out / "_failed" / "000002.json").read_text())
    assert failed["attempts"] == 1 and failed["infrastructure"] is False and failed["rows"] == 4
    assert failed["error"].startswith("OSError: Couldn't deserialize thrift")
    assert "ray::RenderWorker.render_shard()" in failed["detail"] and "\x1b[" not in failed["detail"]
    assert not (out / "_done" / "000002.json").exists()
    assert not (out / "metadata" / "000002.parquet").exists()

    assert main([*argv, "--max-failed-shards", "1"]) == 0  # tolerated; tried again, still bad
    capsys.readouterr()

    # The data is fixed (same size, so the same fingerprint): the rerun commits the shard.
    pq.write_table(
        pa.table({"prompt": [f"corrupted {i}" for i in range(4)]}), bad, use_dictionary=False, compression="snappy"
    )
    assert main(argv) == 0
    assert "1 failed before, retried now" in capsys.readouterr().err
    assert sorted(r["global_index"] for r in read_metadata(out)) == list(range(12))
    assert not (out / "_failed" / "000002.json").exists()
