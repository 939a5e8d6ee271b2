import numpy as np
import pytest
import torch
from diffusers.image_processor import VaeImageProcessor

from kernels import postprocess_uint8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_postprocess_uint8_matches_diffusers_bit_for_bit(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 3, 37, 53, generator=g) * 1.5).to(dtype)  # odd sizes, values outside [-1, 1]
    x[0, 0, 0, :4] = torch.tensor([float("inf"), float("-inf"), 1.0, -1.0], dtype=dtype)
    expected = (VaeImageProcessor().postprocess(x, output_type="np") * 255).round().astype(np.uint8)
    got = postprocess_uint8(x)
    assert got.dtype == torch.uint8 and tuple(got.shape) == (3, 37, 53, 3)
    np.testing.assert_array_equal(got.numpy(), expected)


def test_nan_becomes_zero():
    x = torch.full((1, 3, 2, 2), float("nan"))
    assert postprocess_uint8(x).sum() == 0


def test_rejects_non_nchw():
    with pytest.raises(ValueError, match="expected NCHW"):
        postprocess_uint8(torch.zeros(3, 4, 4))
