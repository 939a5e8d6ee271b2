"""PyCUDA runtime: load cached fatbins into PyTorch's primary context and launch on its stream.

Why this shape: torch owns the CUDA context, so we retain the device's primary context and
push/pop it around every call on the calling thread (PyCUDA's context stack is per thread;
``pycuda.autoinit`` would create a second context). Modules come from ``build.fatbin`` via
``module_from_buffer``, so no nvcc runs once the cache is warm. On torch's default (legacy)
stream we launch on stream 0 directly; on any other current stream we launch on a PyCUDA
stream ordered after it and make torch's stream wait for the kernel (``ExternalStream``).

Not run on a GPU yet in this repository's history: see docs/GPU.md (`make gpu-check`).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
import torch

from turbobatch.kernels import build

MAX_BLOCK_THREADS = 1024
MAX_GRID = (2**31 - 1, 65535, 65535)


class KernelError(RuntimeError):
    """A kernel launch was rejected or failed."""


def probe() -> tuple[bool, str]:
    """(usable, reason): pycuda importable with a libcuda, and torch sees a CUDA device."""
    try:
        import pycuda.driver as drv
    except ImportError as e:  # no pycuda, or pycuda without libcuda
        return False, f"pycuda not importable ({e})"
    if not torch.cuda.is_available():
        return False, "torch sees no CUDA device"
    try:
        drv.init()
    except Exception as e:  # noqa: BLE001 - any driver failure means: use the reference
        return False, f"cuInit failed ({e})"
    return True, f"pycuda {drv.get_version()} (built against CUDA), driver {drv.get_driver_version()}"


def check_launch(grid: tuple[int, int, int], block: tuple[int, int, int]) -> None:
    """Reject launch shapes CUDA would refuse, with the numbers in the message."""
    if len(grid) != 3 or len(block) != 3:
        raise KernelError(f"grid and block need 3 dims, got grid={grid} block={block}")
    if any(g < 1 or g > m for g, m in zip(grid, MAX_GRID)):
        raise KernelError(f"grid {grid} outside 1..{MAX_GRID}")
    if any(b < 1 for b in block) or block[0] * block[1] * block[2] > MAX_BLOCK_THREADS:
        raise KernelError(f"block {block} outside 1..{MAX_BLOCK_THREADS} threads")


class CudaLauncher:
    """Launches kernels of kernels/*.cu on a torch CUDA device through PyCUDA."""

    def __init__(self) -> None:
        import pycuda.driver as drv

        drv.init()
        self._drv = drv
        self._lock = threading.Lock()
        self._contexts: dict[int, Any] = {}
        self._functions: dict[tuple[int, str, str], Any] = {}
        self._streams: dict[tuple[int, int], Any] = {}  # (device, thread id) -> pycuda Stream
        self._sync = os.environ.get("TURBOBATCH_CUDA_SYNC") == "1"  # surface async faults per launch

    def _context(self, device: int) -> Any:
        with self._lock:
            if device not in self._contexts:
                torch.cuda.init()
                self._contexts[device] = self._drv.Device(device).retain_primary_context()
            return self._contexts[device]

    def _function(self, device: int, file: str, kernel: str) -> Any:
        key = (device, file, kernel)
        fn = self._functions.get(key)
        if fn is None:
            if kernel not in build.KERNELS.get(file, ()):
                raise KernelError(f"{kernel!r} is not a kernel of {file!r}")
            module = self._drv.module_from_buffer(build.fatbin(file))
            for name in build.KERNELS[file]:
                self._functions[(device, file, name)] = module.get_function(name)
            fn = self._functions[key]
        return fn

    def __call__(
        self,
        file: str,
        kernel: str,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        args: list[np.generic],
        device: torch.device,
    ) -> None:
        check_launch(grid, block)
        index = device.index if device.index is not None else torch.cuda.current_device()
        ctx = self._context(index)
        ctx.push()
        try:
            fn = self._function(index, file, kernel)
            current = torch.cuda.current_stream(index)
            try:
                if current.cuda_stream == 0:
                    fn(*args, grid=grid, block=block, stream=None)
                else:
                    self._launch_on_side_stream(fn, args, grid, block, index, current)
                if self._sync:
                    self._drv.Context.synchronize()
            except self._drv.Error as e:
                raise KernelError(f"{file}:{kernel} grid={grid} block={block}: {e}") from e
        finally:
            self._drv.Context.pop()

    def _launch_on_side_stream(
        self,
        fn: Any,
        args: list[np.generic],
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        index: int,
        current: torch.cuda.Stream,
    ) -> None:
        key = (index, threading.get_ident())
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = self._drv.Stream()
        side = torch.cuda.ExternalStream(stream.handle, device=torch.device("cuda", index))
        side.wait_stream(current)  # inputs written on torch's stream are ready
        fn(*args, grid=grid, block=block, stream=stream)
        current.wait_stream(side)  # torch's later work (and allocator reuse) waits for the kernel


_launcher: CudaLauncher | None = None
_launcher_lock = threading.Lock()


def launcher() -> CudaLauncher:
    """The process-wide launcher (created on first use)."""
    global _launcher
    with _launcher_lock:
        if _launcher is None:
            _launcher = CudaLauncher()
        return _launcher
