"""kernels/build.py: sources, cache keys, the fatbin cache, and nvcc compiling every .cu."""

import re
import shutil

import pytest

from turbobatch.kernels import build, launchers

NVCC = build.nvcc_path()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH (CI has it): cannot compile kernels/*.cu")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TURBOBATCH_CACHE", str(tmp_path))
    build.nvcc_version.cache_clear()
    yield tmp_path / "kernels"
    build.nvcc_version.cache_clear()


def test_registry_lists_every_kernel_of_every_source():
    on_disk = {p.name for p in build.KERNEL_DIR.glob("*.cu")}
    assert on_disk == set(build.KERNELS)
    for name, kernels in build.KERNELS.items():
        found = re.findall(r'extern "C" __global__ void (\w+)\(', build.source(name))
        assert tuple(found) == kernels, name


def test_block_constants_match_the_cuda_sources():
    assert f"#define TB_BLOCK {launchers.TB_BLOCK} " in (build.KERNEL_DIR / "tb_common.cuh").read_text()
    assert f"#define TB_TILE {launchers.TB_TILE}\n" in (build.KERNEL_DIR / "canny.cu").read_text()


def test_source_inlines_local_headers_once():
    text = build.source("canny.cu")
    assert "#include" not in text and "#pragma once" not in text
    assert text.count("tb_half_to_float(unsigned short h)") == 1
    with pytest.raises(KeyError, match="unknown kernel source"):
        build.source("nope.cu")


def test_cache_key_depends_on_source_arches_and_nvcc_version():
    base = build.cache_key("src", ("sm_80",), "nvcc 13.0")
    assert base == build.cache_key("src", ("sm_80",), "nvcc 13.0")
    others = {
        build.cache_key("src2", ("sm_80",), "nvcc 13.0"),
        build.cache_key("src", ("sm_90",), "nvcc 13.0"),
        build.cache_key("src", ("sm_80",), "nvcc 13.1"),
    }
    assert base not in others and len(others) == 3


def test_arches_from_env(monkeypatch):
    monkeypatch.setenv("TURBOBATCH_CUDA_ARCHES", "sm_90, sm_80")
    assert build.arches() == ("sm_90", "sm_80")
    monkeypatch.delenv("TURBOBATCH_CUDA_ARCHES")
    assert build.arches() == build.DEFAULT_ARCHES
    with pytest.raises(build.BuildError, match="bad CUDA arch"):
        build.gencode_flags(("compute_80",))
    assert build.gencode_flags(("sm_80", "sm_90"))[-1] == "arch=compute_90,code=compute_90"


def test_cache_dir_default(monkeypatch, tmp_path):
    monkeypatch.delenv("TURBOBATCH_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert build.cache_dir() == tmp_path / ".cache" / "turbobatch" / "kernels"


@needs_nvcc
@pytest.mark.parametrize("name", sorted(build.KERNELS))
def test_nvcc_compiles_for_sm80_and_sm90(name):
    data = build.compile_fatbin(build.source(name), ("sm_80", "sm_90"), NVCC)
    assert data.count(b"\x7fELF") >= 2  # one cubin per arch (plus PTX for compute_90)


@needs_nvcc
def test_nvcc_error_is_reported():
    with pytest.raises(build.BuildError, match="nvcc failed"):
        build.compile_fatbin('extern "C" __global__ void k() { undeclared(); }', ("sm_80",), NVCC)


@needs_nvcc
def test_warm_cache_runs_no_nvcc(cache, monkeypatch):
    first = build.fatbin("dhash.cu", ("sm_80",))
    assert len(list(cache.glob("dhash-*.fatbin"))) == 1
    build.nvcc_version.cache_clear()  # a new worker process

    def no_subprocess(*a, **k):
        raise AssertionError("nvcc ran on a warm cache")

    monkeypatch.setattr(build.subprocess, "run", no_subprocess)
    assert build.fatbin("dhash.cu", ("sm_80",)) == first


@needs_nvcc
def test_prebuilt_cache_is_found_without_nvcc(cache, monkeypatch):
    first = build.fatbin("dhash.cu", ("sm_80",))
    monkeypatch.setattr(build, "nvcc_path", lambda: None)
    assert build.fatbin("dhash.cu", ("sm_80",)) == first
    with pytest.raises(build.BuildError, match="nvcc not found"):
        build.fatbin("dhash.cu", ("sm_90",))


@needs_nvcc
def test_changed_source_is_rebuilt(cache, monkeypatch):
    build.fatbin("dhash.cu", ("sm_80",))
    real = build.source
    monkeypatch.setattr(build, "source", lambda name: real(name) + "\n// changed\n")
    build.fatbin("dhash.cu", ("sm_80",))
    assert len(list(cache.glob("dhash-*.fatbin"))) == 2


def test_which_nvcc_is_used(monkeypatch):
    monkeypatch.setenv("NVCC", "/opt/x/nvcc")
    assert build.nvcc_path() == "/opt/x/nvcc"
    monkeypatch.delenv("NVCC")
    assert build.nvcc_path() == shutil.which("nvcc")
