"""Fixtures for the kernel tests: the host-shim launcher and test images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.unit.kernels import shim


@pytest.fixture(scope="session")
def shim_launch() -> shim.ShimLaunch:
    if shim.gxx() is None:
        pytest.skip("g++ not found: the host-shim tests compile kernels/*.cu with g++")
    return shim.ShimLaunch()


def scenes(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """uint8 NHWC RGB test images: flat shapes (edges at many angles), blur and mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w, 3), np.uint8)
    for k in range(n):
        img = np.empty((h, w, 3), np.float64)
        img[:] = rng.integers(0, 256, 3)
        for _ in range(6):
            color = rng.integers(0, 256, 3)
            cy, cx = rng.integers(0, h), rng.integers(0, w)
            if rng.random() < 0.5:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(4, max(5, h // 2)) ** 2
            else:  # a rotated rectangle
                a = rng.uniform(0, np.pi)
                u, v = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a), -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
                mask = (np.abs(u) < rng.integers(3, max(4, w // 3))) & (np.abs(v) < rng.integers(3, max(4, h // 3)))
            img[mask] = color
        blur = (img + np.roll(img, 1, 0) + np.roll(img, 1, 1) + np.roll(img, (1, 1), (0, 1))) / 4
        out[k] = np.clip(blur + rng.normal(0, 4, blur.shape), 0, 255).astype(np.uint8)
    return torch.from_numpy(out)


def nasty_floats(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Random values mostly in [-1.5, 1.5] plus NaN, +-inf, huge and tiny values, and exact ties."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 1.5
    flat = x.view(-1)
    specials = torch.tensor(
        [
            float("nan"),
            float("inf"),
            float("-inf"),
            1e30,
            -1e30,
            1e-30,
            -0.0,
            1.0,
            -1.0,
            (2 * 0.5 / 255) - 1,
            (2 * 1.5 / 255) - 1,
            3e-8,
            -3e-8,
        ]
    )
    idx = torch.randperm(flat.numel(), generator=g)[: 8 * len(specials)]
    flat[idx] = specials.repeat(8)[: len(idx)]
    return x.to(dtype)
