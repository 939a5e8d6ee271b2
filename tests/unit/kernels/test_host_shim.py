"""kernels/host_shim.h itself: barriers and shared memory behave per block, dims reach the kernel."""

import numpy as np
import pytest
import torch

from tests.unit.kernels import shim

KERNELS = r"""
#include "host_shim.h"
// Without real barriers thread 0 would read s[255] before thread 255 wrote it.
extern "C" __global__ void reverse(const int* in, int* out) {
    __shared__ int s[256];
    const int base = blockIdx.x * blockDim.x;
    s[threadIdx.x] = in[base + threadIdx.x];
    __syncthreads();
    out[base + threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}
// Two barriers in a loop, as in tree reductions.
extern "C" __global__ void block_sum(const int* in, long long* out) {
    __shared__ long long s[128];
    const int t = threadIdx.y * blockDim.x + threadIdx.x;
    s[t] = in[blockIdx.z * 128 + t];
    __syncthreads();
    for (int k = 64; k > 0; k >>= 1) {
        if (t < k) s[t] += s[t + k];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.z] = s[0] + 1000000 * (gridDim.z + blockDim.y);
}
TB_EXPORT(reverse)
TB_EXPORT(block_sum)
"""


@pytest.fixture(scope="module")
def launch():
    if shim.gxx() is None:
        pytest.skip("g++ not found: the host-shim tests compile with g++")
    return shim.ShimLaunch({"test.cu": shim.compile_unit(KERNELS, "shim-selftest")})


def test_syncthreads_is_a_real_barrier(launch):
    x = torch.arange(3 * 256, dtype=torch.int32)
    out = torch.empty_like(x)
    launch("test.cu", "reverse", (3, 1, 1), (256, 1, 1), [np.uintp(x.data_ptr()), np.uintp(out.data_ptr())], x.device)
    assert torch.equal(out, x.view(3, 256).flip(1).reshape(-1))


def test_reduction_with_2d_blocks_and_3d_grid(launch):
    x = torch.randint(-1000, 1000, (5 * 128,), dtype=torch.int32)
    out = torch.empty(5, dtype=torch.int64)
    launch("test.cu", "block_sum", (1, 1, 5), (16, 8, 1), [np.uintp(x.data_ptr()), np.uintp(out.data_ptr())], x.device)
    expected = x.view(5, 128).long().sum(1) + 1000000 * (5 + 8)
    assert torch.equal(out, expected)
