"""kernels/runtime.py: launch checks and the backend probe; the PyCUDA launches need a GPU."""

import importlib.util

import numpy as np
import pytest
import torch

from turbobatch.kernels import runtime


def test_check_launch_rejects_what_cuda_would():
    runtime.check_launch((1, 1, 1), (1024, 1, 1))
    for grid, block in [
        ((0, 1, 1), (32, 1, 1)),
        ((1, 70000, 1), (32, 1, 1)),
        ((1, 1, 1), (32, 64, 1)),
        ((1, 1), (32, 1, 1)),
    ]:
        with pytest.raises(runtime.KernelError):
            runtime.check_launch(grid, block)


def test_probe_says_why():
    ok, why = runtime.probe()
    assert isinstance(why, str) and why
    if importlib.util.find_spec("pycuda") is None:
        assert not ok and "pycuda" in why
    if not torch.cuda.is_available():
        assert not ok


gpu = pytest.mark.gpu
needs_pycuda = pytest.mark.skipif(not runtime.probe()[0], reason=f"no usable CUDA/pycuda: {runtime.probe()[1]}")


@gpu
@needs_pycuda
def test_unknown_kernel_is_rejected():
    x = torch.zeros(4, device="cuda")
    with pytest.raises(runtime.KernelError, match="is not a kernel"):
        runtime.launcher()("dhash.cu", "nope", (1, 1, 1), (1, 1, 1), [np.uintp(x.data_ptr())], x.device)


@gpu
@needs_pycuda
def test_runs_in_torch_primary_context_and_leaves_the_stack_clean():
    import pycuda.driver as drv

    from turbobatch.kernels import launchers

    images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8, device="cuda")
    launchers.dhash64(images, runtime.launcher())
    torch.cuda.synchronize()
    assert drv.Context.get_current() is None  # pushed and popped again
    ctx = runtime.launcher()._context(torch.cuda.current_device())
    ctx.push()
    try:
        assert drv.Context.get_current() is not None
    finally:
        drv.Context.pop()
