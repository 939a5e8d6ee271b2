"""Compile kernels/*.cu to fatbins once and cache them by content, so a warm worker never runs nvcc.

The cache key is sha256(translation unit + arch list + ``nvcc --version``); the folder is
``$TURBOBATCH_CACHE/kernels`` or ``~/.cache/turbobatch/kernels``. We call nvcc directly
instead of ``pycuda.compiler.compile``: that function imports ``pycuda.driver`` (which needs
libcuda, so it fails on build machines and CI without a GPU), keys its own cache on md5 and
runs nvcc to preprocess on every call, and adds ``-arch`` of the current device where we want
a fixed multi-arch fatbin. The nvcc command is the one pycuda would run (``nvcc --fatbin``).

Prebuild (e.g. in a worker image): ``python -m turbobatch.kernels.build [--arch sm_80,sm_90]``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent

# Every kernel each .cu file defines; tests check this against the sources.
KERNELS: dict[str, tuple[str, ...]] = {
    "postprocess.cu": ("postprocess_f32", "postprocess_f16", "postprocess_bf16"),
    "dhash.cu": ("dhash_cells", "dhash_bits"),
    "canny.cu": ("gray_u8", "sobel_mag", "canny_classify", "canny_hysteresis"),
    "groupnorm.cu": (
        "gn_stats_nchw_f32",
        "gn_stats_nchw_f16",
        "gn_stats_nchw_bf16",
        "gn_stats_nhwc_f32",
        "gn_stats_nhwc_f16",
        "gn_stats_nhwc_bf16",
        "gn_finalize",
        "gn_apply_nchw_f32",
        "gn_apply_nchw_f16",
        "gn_apply_nchw_bf16",
        "gn_apply_nhwc_f32",
        "gn_apply_nhwc_f16",
        "gn_apply_nhwc_bf16",
    ),
    "adanorm.cu": ("adanorm_f32", "adanorm_f16", "adanorm_bf16"),
}

# Ampere, Ada, Hopper as SASS, plus compute_90 PTX that newer cards JIT once (driver cache).
DEFAULT_ARCHES: tuple[str, ...] = ("sm_80", "sm_86", "sm_89", "sm_90")

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)
_PRAGMA_ONCE = re.compile(r"^\s*#\s*pragma\s+once\s*$", re.MULTILINE)


class BuildError(RuntimeError):
    """nvcc is missing or rejected a kernel source."""


def arches() -> tuple[str, ...]:
    """Target list: $TURBOBATCH_CUDA_ARCHES (comma separated, e.g. "sm_90") or DEFAULT_ARCHES."""
    env = os.environ.get("TURBOBATCH_CUDA_ARCHES", "").strip()
    return tuple(a.strip() for a in env.split(",") if a.strip()) if env else DEFAULT_ARCHES


def cache_dir() -> Path:
    root = os.environ.get("TURBOBATCH_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "turbobatch"
    return base / "kernels"


def source(name: str) -> str:
    """The whole translation unit of kernels/<name>: local "..." includes inlined, once each."""
    seen: set[str] = set()

    def expand(file: str) -> str:
        if file in seen:
            return ""
        seen.add(file)
        text = _PRAGMA_ONCE.sub("", (KERNEL_DIR / file).read_text())
        return _INCLUDE.sub(lambda m: expand(m.group(1)), text)

    if name not in KERNELS:
        raise KeyError(f"unknown kernel source {name!r}; known: {sorted(KERNELS)}")
    return expand(name)


def nvcc_path() -> str | None:
    return os.environ.get("NVCC") or shutil.which("nvcc")


def _stat_id(nvcc: str) -> str:
    """Identity of the nvcc binary (path, real path, size, mtime) without running it."""
    parts = []
    for p in (Path(nvcc), Path(nvcc).resolve()):
        st = p.stat()
        parts.append(f"{p}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


@functools.lru_cache(maxsize=4)
def nvcc_version(nvcc: str) -> str:
    """``nvcc --version``, remembered in the cache per nvcc binary so warm starts never exec nvcc."""
    memo = cache_dir() / f"nvcc-version-{_stat_id(nvcc)}.txt"
    if memo.is_file():
        return memo.read_text()
    text = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    _write_atomic(memo, text.encode())
    return text


def _write_atomic(path: Path, data: bytes) -> None:
    """Temp file then rename: concurrent workers never read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def gencode_flags(targets: tuple[str, ...]) -> list[str]:
    """SASS for every sm_XY, plus PTX for the newest so later GPUs can JIT it."""
    flags: list[str] = []
    for arch in targets:
        if not re.fullmatch(r"sm_\d+[a-z]?", arch):
            raise BuildError(f"bad CUDA arch {arch!r}: expected e.g. sm_80")
        flags += ["-gencode", f"arch=compute_{arch[3:]},code={arch}"]
    newest = max(targets, key=lambda a: int(re.sub(r"\D", "", a)))
    flags += ["-gencode", f"arch=compute_{newest[3:]},code=compute_{newest[3:]}"]
    return flags


def cache_key(text: str, targets: tuple[str, ...], version: str) -> str:
    """sha256 of (source, arch list) and of the nvcc version, joined: ``<src>-<nvcc>``.

    Split in two so a machine without nvcc can still find a fatbin built for this exact
    source and arch list (see ``fatbin``)."""
    src = hashlib.sha256(f"{text}\0{','.join(targets)}".encode()).hexdigest()[:32]
    return f"{src}-{hashlib.sha256(version.encode()).hexdigest()[:16]}"


def compile_fatbin(text: str, targets: tuple[str, ...], nvcc: str) -> bytes:
    """Run nvcc --fatbin on one translation unit; raises BuildError with nvcc's message."""
    with tempfile.TemporaryDirectory(prefix="turbobatch-nvcc-") as tmp:
        src, out = Path(tmp) / "kernel.cu", Path(tmp) / "kernel.fatbin"
        src.write_text(text)
        cmd = [nvcc, "--fatbin", "-O3", *gencode_flags(targets), "-o", str(out), str(src)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise BuildError(f"nvcc failed ({' '.join(cmd)}):\n{done.stderr or done.stdout}")
        return out.read_bytes()


def fatbin(name: str, targets: tuple[str, ...] | None = None) -> bytes:
    """The fatbin of kernels/<name> for `targets`, from the cache or compiled once into it.

    Without nvcc (a runtime image with a prebuilt cache) any cached fatbin of this exact
    source and arch list is used."""
    targets = targets or arches()
    text = source(name)
    stem = Path(name).stem
    nvcc = nvcc_path()
    if nvcc is None:
        src = cache_key(text, targets, "").split("-")[0]
        found = sorted(cache_dir().glob(f"{stem}-{src}-*.fatbin"), key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1].read_bytes()
        raise BuildError(
            f"nvcc not found on PATH (set $NVCC) and no prebuilt {stem} fatbin for {','.join(targets)} in {cache_dir()}"
        )
    path = cache_dir() / f"{stem}-{cache_key(text, targets, nvcc_version(nvcc))}.fatbin"
    if path.is_file():
        return path.read_bytes()
    data = compile_fatbin(text, targets, nvcc)
    _write_atomic(path, data)
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Prebuild the kernel fatbin cache.")
    parser.add_argument(
        "--arch", help="comma separated, e.g. sm_80,sm_90 (default: %(default)s)", default=",".join(arches())
    )
    args = parser.parse_args(argv)
    targets = tuple(a.strip() for a in args.arch.split(",") if a.strip())
    for name in KERNELS:
        print(f"{name}: {len(fatbin(name, targets))} bytes for {','.join(targets)} in {cache_dir()}")


if __name__ == "__main__":
    main()
