"""Host-shim launcher for tests: kernels/*.cu compiled by g++ with kernels/host_shim.h.

`ShimLaunch` has the same call signature as kernels.runtime.CudaLauncher, so the op code in
kernels/launchers.py runs unchanged on CPU tensors. Libraries are built once per source hash
into a per-user temp folder, never into the repository.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from turbobatch.kernels import build

SHIM_HEADER = build.KERNEL_DIR / "host_shim.h"
GXX_FLAGS = ["-std=c++17", "-O2", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared", "-Wall", "-Werror"]

_CTYPES = {
    np.dtype(np.uintp): ctypes.c_void_p,
    np.dtype(np.int32): ctypes.c_int32,
    np.dtype(np.int64): ctypes.c_int64,
    np.dtype(np.float32): ctypes.c_float,
}


def gxx() -> str | None:
    return os.environ.get("CXX_FOR_SHIM") or shutil.which("g++")


def _shim_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"turbobatch-shim-{os.getuid()}"


def build_library(file: str) -> Path:
    """Compile kernels/<file> + the shim into a shared library (cached by content)."""
    exports = "".join(f"TB_EXPORT({k})\n" for k in build.KERNELS[file])
    return compile_unit(f'#include "host_shim.h"\n{build.source(file)}\n{exports}', Path(file).stem)


def compile_unit(unit: str, stem: str) -> Path:
    """g++ one C++ translation unit (which includes host_shim.h) into a cached .so."""
    compiler = gxx()
    if compiler is None:
        raise RuntimeError("g++ not found")
    key = hashlib.sha256("\0".join([unit, SHIM_HEADER.read_text(), *GXX_FLAGS]).encode())
    out = _shim_dir() / f"{stem}-{key.hexdigest()[:24]}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="turbobatch-shim-") as tmp:
        cpp = Path(tmp) / "unit.cpp"
        cpp.write_text(unit)
        lib = Path(tmp) / "lib.so"
        cmd = [compiler, *GXX_FLAGS, f"-I{build.KERNEL_DIR}", "-o", str(lib), str(cpp)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"shim build failed: {' '.join(cmd)}\n{done.stderr}")
        os.replace(lib, out)
    return out


class ShimLaunch:
    """Runs kernels on CPU tensors via the g++-built shim libraries."""

    def __init__(self, libraries: dict[str, Path] | None = None) -> None:
        self._libs: dict[str, ctypes.CDLL] = {k: ctypes.CDLL(str(v)) for k, v in (libraries or {}).items()}
        self.calls: list[tuple[str, tuple[int, int, int], tuple[int, int, int]]] = []

    def __call__(
        self,
        file: str,
        kernel: str,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        args: list[np.generic],
        device: torch.device,
    ) -> None:
        assert device.type == "cpu", f"the shim runs on CPU tensors, got {device}"
        if file not in self._libs:
            self._libs[file] = ctypes.CDLL(str(build_library(file)))
        values = [_CTYPES[np.dtype(type(a))](int(a) if np.dtype(type(a)).kind in "iu" else float(a)) for a in args]
        argv = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        dims = (ctypes.c_uint * 6)(*grid, *block)
        getattr(self._libs[file], f"tb_launch_{kernel}")(dims, argv)
        self.calls.append((kernel, grid, block))
