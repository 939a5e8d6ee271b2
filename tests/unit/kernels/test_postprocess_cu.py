"""kernels/postprocess.cu through the g++ host shim vs the torch reference: bit for bit."""

import pytest
import torch

from tests.unit.kernels.conftest import nasty_floats
from turbobatch.kernels import launchers, reference
from turbobatch.kernels.stats import from_partials

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 3, 37, 53), (2, 1, 8, 9), (1, 4, 70, 33), (2, 3, 1, 1)])
def test_postprocess_matches_reference_bit_for_bit(shim_launch, dtype, shape):
    x = nasty_floats(shape, dtype)
    got, partials = launchers.postprocess(x, shim_launch, stats=False)
    assert partials is None
    assert got.dtype == torch.uint8 and tuple(got.shape) == (shape[0], shape[2], shape[3], shape[1])
    assert torch.equal(got, reference.postprocess_uint8(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_16_bit_pattern(shim_launch, dtype):
    """All 65536 half / bfloat16 values: covers the bit-level conversions in tb_common.cuh."""
    x = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(dtype).reshape(1, 1, 256, 256)
    got, _ = launchers.postprocess(x, shim_launch, stats=False)
    assert torch.equal(got, reference.postprocess_uint8(x))


def test_float32_rounding_ties_and_subnormals(shim_launch):
    # v*255 lands exactly on k + 0.5 for these inputs (round half to even), plus subnormals
    k = torch.arange(0, 255, dtype=torch.float32)
    ties = ((k + 0.5) / 255) * 2 - 1
    tiny = torch.tensor([1e-45, -1e-45, 1e-40, -1e-40, 1.1754942e-38], dtype=torch.float32)
    x = torch.cat([ties, torch.nextafter(ties, torch.ones_like(ties)), tiny]).reshape(1, 1, 1, -1)
    got, _ = launchers.postprocess(x, shim_launch, stats=False)
    assert torch.equal(got, reference.postprocess_uint8(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_stats_match_reference(shim_launch, dtype):
    x = nasty_floats((3, 3, 37, 53), dtype, seed=1)
    x[1] = -1.0  # a black image
    x[2, :, :5] = float("nan")
    got, partials = launchers.postprocess(x, shim_launch, stats=True)
    assert partials.shape[1] > 1  # several blocks per image are reduced
    assert torch.equal(got, reference.postprocess_uint8(x))
    stats, ref = from_partials(partials, 3 * 37 * 53), reference.image_stats(x)
    for field in ("nan", "inf", "min", "max"):
        assert torch.equal(getattr(stats, field), getattr(ref, field)), field
    torch.testing.assert_close(stats.mean, ref.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stats.std, ref.std, rtol=1e-9, atol=1e-9)
    assert stats.black().tolist() == [False, True, False]
    assert stats.broken()[2] and int(stats.nan[2]) >= 3 * 5 * 53


def test_rejects_bad_inputs(shim_launch):
    with pytest.raises(ValueError, match="expected NCHW"):
        launchers.postprocess(torch.zeros(3, 4, 4), shim_launch, stats=False)
    with pytest.raises(TypeError, match="dtype"):
        launchers.postprocess(torch.zeros(1, 3, 4, 4, dtype=torch.float64), shim_launch, stats=False)


def test_non_contiguous_input(shim_launch):
    x = nasty_floats((2, 3, 40, 30), torch.float32).transpose(2, 3)
    got, _ = launchers.postprocess(x, shim_launch, stats=False)
    assert torch.equal(got, reference.postprocess_uint8(x))
