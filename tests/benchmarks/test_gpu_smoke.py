"""benchmarks/gpu.py runs on a lent GPU only rarely: check its code path here (no timings)."""

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

# The lent GPU machine has no Ray, s3fs or boto (docs/GPU.md): the benchmark, and the worker it
# drives, must run without them, so the smoke runs hide them.
WITHOUT_CLUSTER_PACKAGES = """
import runpy, sys
for name in ("ray", "s3fs", "boto3", "botocore", "aiobotocore", "moto"):
    sys.modules[name] = None  # import fails as if not installed
sys.argv[0] = "benchmarks/gpu.py"
runpy.run_path("benchmarks/gpu.py", run_name="__main__")
"""


def run_gpu_benchmark(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", WITHOUT_CLUSTER_PACKAGES, "--smoke", *args]
    return subprocess.run(command, check=False, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_gpu_benchmark_code_path_runs_on_cpu(tmp_path):
    result = run_gpu_benchmark("--trace", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tiny-sd-turbo: naive loop" in result.stdout and "turbobatch worker" in result.stdout
    assert "[baseline]" not in result.stdout  # no --variants: today's output
    assert re.search(r"^tiny-sd-turbo worker profile .*: pipeline calls [\d.]+%, idle between shards 0.0%, "
                     r"waiting for encodes [\d.]+%, render loop [\d.]+%$", result.stdout, re.MULTILINE), result.stdout
    component = r"[\d.]+ ms/image \(\d+%, [\d.]+ TFLOP/s\)"
    assert re.search(rf"^tiny-sd-turbo baseline worker, time per component .*: [\d.]+ ms/image: text_encoders {component}, "
                     rf"unet {component}, vae_decode {component}; everything else -?[\d.]+ ms/image \(-?\d+%\)$",
                     result.stdout, re.MULTILINE), result.stdout  # fmt: skip
    profile = (tmp_path / "profile-tiny-sd-turbo.txt").read_text()  # ops of the worker's device thread
    assert re.search(r"^ +aten::\w*conv\w* ", profile, re.MULTILINE), profile


@pytest.mark.slow
def test_gpu_benchmark_variants_side_by_side_on_cpu():
    result = run_gpu_benchmark("--variants", "channels_last,fuse_qkv,tiny_vae")
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "tiny-sd-turbo: naive loop" in out
    baseline = r"^tiny-sd-turbo \[baseline\]: [\d.]+ img/s, 1\.000x baseline; first shard [\d.]+ s$"
    assert re.search(baseline, out, re.MULTILINE), out
    for name in ("channels_last", "fuse_qkv"):
        pattern = (rf"^tiny-sd-turbo \[{name}\]: [\d.]+ img/s, [\d.]+x baseline; first shard [\d.]+ s; "
                   r"pixels vs baseline over (\d+) images: max abs diff (\d+), mean ([\d.]+)$")  # fmt: skip
        line = re.search(pattern, out, re.MULTILINE)
        assert line, out
        assert int(line[1]) >= 4 and int(line[2]) <= 3, line[0]  # numeric noise at most
    tiny_vae = r"^tiny-sd-turbo \[tiny_vae\]: .* max abs diff \d+, mean [\d.]+ \(different images by design\)$"
    assert re.search(tiny_vae, out, re.MULTILINE), out
    assert "skipped" not in out


def test_unknown_variant_is_a_usage_error_naming_the_valid_ones():
    result = run_gpu_benchmark("--variants", "channels_last,taesd")
    assert result.returncode == 2
    assert "unknown speedup 'taesd'" in result.stderr and "compile_unet" in result.stderr
