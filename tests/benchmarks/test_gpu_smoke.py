"""benchmarks/gpu.py runs on a lent GPU only rarely: check its code path here (no timings)."""

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_gpu_benchmark_code_path_runs_on_cpu():
    result = subprocess.run([sys.executable, "benchmarks/gpu.py", "--smoke"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tiny-sd-turbo: naive loop" in result.stdout and "turbobatch worker" in result.stdout
