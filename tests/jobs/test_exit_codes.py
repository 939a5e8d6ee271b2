"""Exit codes of a render hold every time, through every entry point and every way a run is stopped.

0 done, 1 failed shards, 2 bad job, 130 Ctrl-C, 143 SIGTERM. Each test runs the real command as a
subprocess: what it checks (Arrow's teardown abort, a signal to the whole process group, Ray's
warnings) only shows in a process of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import REPO, write_parquet

SMALL = ["--model", "tiny-sd-turbo", "--height", "32", "--width", "32", "--shard-size", "4", "--workers", "1"]
# The three ways to run a render; PYTHONPATH (local_env) makes the installed command run this checkout.
ENTRY_POINTS = ([str(Path(sys.executable).parent / "turbobatch"), "render"],
                [sys.executable, "-m", "turbobatch", "render"],
                [sys.executable, "-m", "turbobatch.jobs.render"])  # fmt: skip


def local_env(**extra: str) -> dict[str, str]:
    """A plain local run: no RAY_* from the test's environment (no cluster to join, no auth mode chosen)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "PYTHONPATH": str(REPO), **extra}


@pytest.mark.slow  # 20 processes, each importing torch: ~100 s on 2 busy cores
def test_a_bad_job_exits_2_every_time(tmp_path: Path) -> None:
    """Duplicate keys fail at plan time, before Ray starts, after the key check read the column with Arrow's
    threads; Arrow's teardown could then abort the interpreter (exit 134: 2 of 37 runs in the issue, 1 of 40
    here before the fix; apache/arrow#34314).
    20 runs over the three entry points, two at a time (each is mostly the ~5 s import of torch)."""
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
