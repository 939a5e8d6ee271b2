"""Exit codes of a render hold every time, through every entry point and every way a run is stopped.

0 done, 1 failed shards, 2 bad job, 130 Ctrl-C, 143 SIGTERM. Each test runs the real command as a
subprocess: what it checks (Arrow's teardown abort, a signal to the whole process group, Ray's
warnings) only shows in a process of its own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import REPO, write_parquet
from tests.helpers import _ancestors, assert_complete_and_clean, done_count, kill_session, wait_for
from turbobatch import faults

SMALL = ["--model", "tiny-sd-turbo", "--height", "32", "--width", "32", "--shard-size", "4", "--workers", "1"]
PROMPTS = [f"prompt {i}" for i in range(24)]  # 6 shards
RESUME_LINE = "terminated: committed shards are kept; run the same command again to resume"
# The three ways to run a render; PYTHONPATH (local_env) makes the installed command run this checkout.
ENTRY_POINTS = (
    [str(Path(sys.executable).parent / "turbobatch"), "render"],
    [sys.executable, "-m", "turbobatch", "render"],
    [sys.executable, "-m", "turbobatch", "render"],
)


def local_env(**extra: str) -> dict[str, str]:
    """A plain local run: no RAY_* from the test's environment (no cluster to join, no auth mode chosen)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def session_processes(session: int) -> list[str]:
    """Every process of a session, defunct ones too (``ps`` style: pid, state, command line)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) == session:
            found.append(f"{stat.parent.name} {fields[0]} {cmdline.strip() or stat.read_text().split()[1]}")
    return found


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    return write_parquet(tmp_path / "in" / "prompts.parquet", {"prompt": PROMPTS})


@pytest.mark.slow  # 20 processes, each importing torch: ~100 s on 2 busy cores
def test_a_bad_job_exits_2_every_time(tmp_path: Path) -> None:
    """Duplicate keys fail at plan time, before Ray starts, after the key check read the column with Arrow's
    threads; Arrow's teardown could then abort the interpreter (exit 134: 2 of 37 runs in the issue, 1 of 40
    here before the fix; apache/arrow#34314). 20 runs over the three entry points, two at a time (each is mostly
    the ~5 s import of torch)."""
    data = write_parquet(tmp_path / "dup.parquet", {"prompt": ["a", "b", "c", "d"], "id": ["x", "y", "x", "z"]})

    def attempt(i: int) -> subprocess.CompletedProcess[str]:
        command = [*ENTRY_POINTS[i % 3], str(data), str(tmp_path / f"out{i}"), *SMALL, "--key-column", "id"]
        return subprocess.run(command, env=local_env(), cwd=REPO, capture_output=True, text=True, timeout=120)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(attempt, range(20)))
    for i, result in enumerate(results):
        assert result.returncode == 2, (ENTRY_POINTS[i % 3], result.returncode, result.stderr[-2000:])
        assert "error: --key-column: 'id' value 'x' (key 'x')" in result.stderr
        assert "terminate called" not in result.stderr


def start_driver(prompts: Path, out: Path, delay_s: float = 0.25) -> subprocess.Popen[str]:
    """A render in a session of its own (as a batch system starts it), each row slowed so a signal lands mid-run."""
    command = [*ENTRY_POINTS[1], str(prompts), str(out), *SMALL]
    env = local_env(**{faults.ENV: json.dumps({"delay_s": delay_s})})
    return subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def stop_and_time(driver: subprocess.Popen[str], out: Path, send: Callable[[], None]) -> tuple[float, str]:
    """Send the signal once a shard of ``out`` is committed; seconds until the driver exited, and its stderr."""
    wait_for(lambda: done_count(out) >= 1, 180, "a committed shard")
    started = time.monotonic()
    send()
    _, err = driver.communicate(timeout=60)
    return time.monotonic() - started, err


def assert_nothing_left(session: int) -> None:
    """No process of the run's session remains, not even a defunct one: gcs_server, raylet, ray:: actors."""
    wait_for(lambda: not session_processes(session), 10, "the run's processes to end")


@pytest.mark.slow
def test_sigterm_to_the_process_group_ends_the_driver_with_143_and_the_rerun_finishes(prompts, tmp_path):
    """What Slurm, systemd, Kubernetes and `timeout` do. Before: the group signal killed the local Ray's GCS and
    raylet first, the driver hung 60 s ("Failed to connect to GCS within 60 seconds"), exited 1 and left defunct
    gcs_server and raylet behind. Now they run in groups of their own: measured 1.9 s from killpg to exit 143."""
    out = tmp_path / "out"
    driver = start_driver(prompts, out)
    try:
        seconds, err = stop_and_time(driver, out, lambda: os.killpg(driver.pid, signal.SIGTERM))
        assert driver.returncode == 143, err[-3000:]
        assert RESUME_LINE in err
        assert seconds < 10, f"the driver took {seconds:.1f} s to end"
        assert_nothing_left(driver.pid)
        committed = done_count(out)
        time.sleep(2)  # an actor left alive would commit its in-flight shard meanwhile
        assert done_count(out) == committed < 6
    finally:
        kill_session(driver.pid)

    again = subprocess.run(
        [*ENTRY_POINTS[1], str(prompts), str(out), *SMALL],
        env=local_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{committed} already committed" in again.stderr
    assert_complete_and_clean(out, 6, len(PROMPTS))


@pytest.mark.slow
def test_sigterm_to_every_process_of_the_run_still_ends_in_bounded_time(prompts, tmp_path):
    """systemd (KillMode=control-group) and Slurm signal every process, Ray's included: the GCS stops answering
    and the driver's cleanup blocks. The watchdog (signals.TERMINATE_GRACE_S, 6 s) ends it with 143 and kills
    what is left: measured 7.6 s from the signal to exit."""
    out = tmp_path / "out"
    driver = start_driver(prompts, out)

    def everyone() -> None:
        below = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if driver.pid in _ancestors(pid)]
        for pid in [driver.pid, *below]:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    try:
        seconds, err = stop_and_time(driver, out, everyone)
        assert driver.returncode == 143, err[-3000:]
        assert RESUME_LINE in err
        assert seconds < 15, f"the driver took {seconds:.1f} s to end"
        assert_nothing_left(driver.pid)
    finally:
        kill_session(driver.pid)


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_exits_130(prompts, tmp_path):
    """Ctrl-C in a terminal signals the foreground process group: the driver stops its actors, says how to
    resume and exits 130; Ray's processes ignore SIGINT and are shut down by the driver."""
    out = tmp_path / "out"
    driver = start_driver(prompts, out)
    try:
        _, err = stop_and_time(driver, out, lambda: os.killpg(driver.pid, signal.SIGINT))
        assert driver.returncode == 130, err[-3000:]
        assert "interrupted: committed shards are kept; run the same command again to resume" in err
        assert_nothing_left(driver.pid)
    finally:
        kill_session(driver.pid)


@pytest.mark.slow
def test_a_plain_local_run_prints_no_warning_it_did_not_cause(tmp_path):
    """`make demo`'s command on a local Ray: no Ray "Token authentication is enabled" warning (the local Ray
    gets token auth explicitly: jobs/run/local_ray.py explicit_auth_mode), no Python warnings, exit 0."""
    command = [
        *ENTRY_POINTS[1],
        "examples/prompts.parquet",
        str(tmp_path / "demo"),
        "--model",
        "tiny-sd-turbo",
        "--shard-size",
        "10",
    ]
    result = subprocess.run(command, env=local_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line for line in result.stderr.splitlines() if "WARNING" in line] == []
    assert re.findall(r"\w+Warning\b.*", result.stderr) == []
    assert "shards: 5/5 committed" in result.stdout
