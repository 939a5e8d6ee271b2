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
sys.path.insert(0, "benchmarks")  # as `python benchmarks/gpu.py` (gpu-check) runs it
runpy.run_path("benchmarks/gpu.py", run_name="__main__")
"""


def run_gpu_benchmark(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", WITHOUT_CLUSTER_PACKAGES, "--smoke", *args]
    return subprocess.run(command, check=False, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_transformer_families_run_through_the_gpu_benchmark_on_cpu():
    """`make gpu-check GPU_MODELS=...` times Z-Image and FLUX.2 klein: their twins take the same path,
    each change that applies timed and compared with plain diffusers, the UNet-only ones said so."""
    result = run_gpu_benchmark("--models", "tiny-z-image-turbo", "tiny-flux2-klein", "--decoders", "vae")
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("tiny-z-image-turbo vae", "tiny-flux2-klein vae"):
        assert f"{name} [unet_fused_norms]: not timed (no unet in this pipeline)" in result.stdout
        for label in ("none", "transformer_fused_norms", "default", "all"):
            line = re.search(rf"^{re.escape(name)} \[{label}\]: [\d.]+ img/s.*max abs diff (\d+)", result.stdout, re.M)
            assert line and int(line.group(1)) <= 1, (label, result.stdout[-3000:])


@pytest.mark.slow
def test_gpu_benchmark_code_path_runs_on_cpu(tmp_path):
    result = run_gpu_benchmark("--trace", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    for decoder in ("vae", "tiny"):
        name = f"tiny-sd-turbo {decoder}"
        assert re.search(rf"^{name}: naive loop [\d.]+ img/s; [\d.]+ TFLOP/image$", out, re.MULTILINE), out
        labels = [
            "previous",
            "none",
            "overlap",
            "fold_upsample",
            "fused_norms",
            "unet_fused_norms",
            "channels_last",
            "cudnn_benchmark",
            "default",
            "all",
        ]
        if decoder == "tiny":
            labels.remove("fused_norms")  # a tiny autoencoder has no GroupNorm: not timed
            assert f"{name} [fused_norms]" not in out
        for label in labels:
            line = re.search(
                rf"^{name} \[{label}\]: [\d.]+ img/s, [\d.]+x naive, [\d.]+x previous; first shard "
                r"[\d.]+ s; vs plain diffusers over (\d+) images: max abs diff (\d+), mean [\d.]+$",
                out,
                re.MULTILINE,
            )
            assert line, (label, out)
            assert int(line[1]) >= 4 and int(line[2]) <= 1, line[0]  # within 1 level of plain diffusers
        assert re.search(
            rf"^{name} \[[\w,+]+\] profile .*: pipeline calls [\d.]+%, idle between shards 0.0%, "
            r"waiting for encodes [\d.]+%, render loop [\d.]+%$",
            out,
            re.MULTILINE,
        ), out
        component = r"[\d.]+ ms/image \(\d+%, [\d.]+ TFLOP/s\)"
        assert re.search(
            rf"^{name} \[[\w,+]+\] time per component .*: [\d.]+ ms/image: text_encoders {component}, "
            rf"unet {component}, vae_decode {component}; everything else -?[\d.]+ ms/image \(-?\d+%\)$",
            out,
            re.MULTILINE,
        ), out
        profile = (tmp_path / f"profile-{name.replace(' ', '-')}.txt").read_text()  # the device thread's ops
        assert re.search(r"^ +aten::\w*conv\w* ", profile, re.MULTILINE), profile
    assert "skipped" not in out


def test_unknown_variant_is_a_usage_error_naming_the_valid_ones():
    result = run_gpu_benchmark("--variants", "default,taesd")
    assert result.returncode == 2
    assert "unknown change 'taesd'" in result.stderr and "fold_upsample" in result.stderr
