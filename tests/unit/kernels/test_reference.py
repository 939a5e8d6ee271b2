import numpy as np
import pytest
import torch

from tests.unit.kernels.conftest import nasty_floats, scenes
from turbobatch.kernels import postprocess_uint8, reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_postprocess_uint8_matches_diffusers_bit_for_bit(dtype):
    VaeImageProcessor = pytest.importorskip("diffusers.image_processor").VaeImageProcessor
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


def test_image_stats_against_numpy():
    x = nasty_floats((3, 3, 37, 53), torch.float16)
    x[1] = -1
    stats = reference.image_stats(x)
    u8 = postprocess_uint8(x).numpy().reshape(3, -1).astype(np.float64)
    xs = x.float().numpy().reshape(3, -1)
    assert stats.nan.tolist() == np.isnan(xs).sum(1).tolist()
    assert stats.inf.tolist() == np.isinf(xs).sum(1).tolist()
    np.testing.assert_allclose(stats.mean.numpy(), u8.mean(1), rtol=1e-12)
    np.testing.assert_allclose(stats.std.numpy(), u8.std(1), rtol=1e-9)
    assert stats.min.tolist() == u8.min(1).tolist() and stats.max.tolist() == u8.max(1).tolist()
    assert stats.black().tolist() == [False, True, False]


def test_gray_is_opencv_fixed_point_luma():
    px = torch.tensor([[[[255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]]], dtype=torch.uint8)
    expected = [(4899 * r + 9617 * g + 1868 * b + 8192) >> 14 for r, g, b in px[0, 0].tolist()]
    assert reference.gray(px)[0, 0].tolist() == expected == [255, 76, 150, 29, 18]
    assert torch.equal(reference.gray(px[..., :1]), px[..., 0].int())


def _dhash_numpy(img: np.ndarray) -> int:
    """The docstring's definition, written independently with float means."""
    g = reference.gray(torch.from_numpy(img[None])).numpy()[0].astype(np.float64)
    h, w = g.shape
    means = np.array(
        [[g[i * h // 8 : (i + 1) * h // 8, j * w // 9 : (j + 1) * w // 9].mean() for j in range(9)] for i in range(8)]
    )
    return sum(1 << (i * 8 + j) for i in range(8) for j in range(8) if means[i, j] > means[i, j + 1])


def test_dhash64_follows_its_definition():
    images = scenes(4, 37, 53)
    got = reference.dhash64(images)
    for k in range(4):
        assert int(got[k]) & (2**64 - 1) == _dhash_numpy(images[k].numpy())


def test_dhash64_separates_near_duplicates_from_different_images():
    images = scenes(3, 128, 128)
    noisy = images[0].int() + torch.randint(-3, 4, images[0].shape, generator=torch.Generator().manual_seed(1))
    near = torch.stack([images[0], noisy.clamp(0, 255).to(torch.uint8)])
    h = reference.dhash64(torch.cat([near, images[1:]]))
    assert int(reference.hamming64(h[0], h[1])) <= 4
    assert int(reference.hamming64(h[0], h[2])) >= 16 and int(reference.hamming64(h[0], h[3])) >= 16
    assert reference.hamming64(h, h).tolist() == [0, 0, 0, 0]


def test_canny_thresholds_follow_opencv():
    assert reference.canny_thresholds(100, 200) == (100, 200)
    assert reference.canny_thresholds(200.7, 99.9) == (99, 200)


@pytest.mark.parametrize("size", [(37, 53), (512, 512)])
def test_canny_reference_against_opencv(size):
    cv2 = pytest.importorskip("cv2")
    images = scenes(2, *size, seed=5)
    gray = reference.gray(images).to(torch.uint8).numpy()
    for low, high in [(50, 100), (100, 200)]:
        got = reference.canny(images, low, high).numpy()
        for k in range(2):
            expected = cv2.Canny(gray[k], low, high)
            tp = np.logical_and(got[k] > 0, expected > 0).sum()
            assert 2 * tp / ((got[k] > 0).sum() + (expected > 0).sum()) >= 0.9
