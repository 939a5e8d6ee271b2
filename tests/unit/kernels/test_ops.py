"""kernels.ops: backend choice, and (with a GPU) every CUDA kernel against the torch reference."""

import pytest
import torch

from tests.unit.kernels.conftest import nasty_floats, scenes
from turbobatch import kernels
from turbobatch.kernels import ops, reference

CUDA_OK, CUDA_WHY = ops.cuda_status()
needs_gpu = pytest.mark.skipif(not CUDA_OK, reason=f"no usable CUDA/pycuda: {CUDA_WHY}")


def test_backend_is_reported():
    assert kernels.BACKEND in ("pycuda", "torch-reference")
    assert (kernels.BACKEND == "pycuda") == CUDA_OK and kernels.BACKEND_REASON == CUDA_WHY


def test_auto_on_cpu_is_the_reference():
    x = nasty_floats((2, 3, 9, 11), torch.float16)
    assert torch.equal(kernels.postprocess_uint8(x), reference.postprocess_uint8(x))
    assert torch.equal(kernels.postprocess_uint8(x, backend="reference"), reference.postprocess_uint8(x))
    images, stats = kernels.postprocess_with_stats(x)
    assert torch.equal(images, reference.postprocess_uint8(x))
    assert torch.equal(kernels.image_stats(x).nan, stats.nan)
    u8 = scenes(2, 20, 30)
    assert torch.equal(kernels.dhash64(u8), reference.dhash64(u8))
    assert torch.equal(kernels.canny(u8, 50, 100), reference.canny(u8, 50, 100))


def test_bad_backend_requests():
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="backend must be"):
        kernels.postprocess_uint8(x, backend="triton")
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        kernels.postprocess_uint8(x, backend="cuda")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 3, 37, 53), (16, 3, 512, 512)])
def test_gpu_postprocess_and_stats_bit_exact(dtype, shape):
    x = nasty_floats(shape, dtype).cuda()
    expected = reference.postprocess_uint8(x)
    assert torch.equal(kernels.postprocess_uint8(x, backend="cuda"), expected)
    assert torch.equal(expected.cpu(), reference.postprocess_uint8(x.cpu()))  # torch CUDA == torch CPU
    images, stats = kernels.postprocess_with_stats(x, backend="cuda")
    ref = reference.image_stats(x)
    assert torch.equal(images, expected)
    for field in ("nan", "inf", "min", "max"):
        assert torch.equal(getattr(stats, field), getattr(ref, field)), field
    torch.testing.assert_close(stats.mean, ref.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stats.std, ref.std, rtol=1e-9, atol=1e-9)


@pytest.mark.gpu
@needs_gpu
def test_gpu_every_16_bit_pattern():
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(dtype).reshape(1, 1, 256, 256).cuda()
        assert torch.equal(kernels.postprocess_uint8(x, backend="cuda").cpu(), reference.postprocess_uint8(x.cpu()))


@pytest.mark.gpu
@needs_gpu
def test_gpu_dhash_and_canny_equal_reference():
    u8 = scenes(4, 512, 512).cuda()
    assert torch.equal(kernels.dhash64(u8, backend="cuda"), reference.dhash64(u8))
    odd = scenes(3, 37, 53).cuda()
    assert torch.equal(kernels.dhash64(odd, backend="cuda").cpu(), reference.dhash64(odd.cpu()))
    for images in (u8, odd):
        assert torch.equal(kernels.canny(images, 50, 100, backend="cuda").cpu(), reference.canny(images.cpu(), 50, 100))


@pytest.mark.gpu
@needs_gpu
def test_gpu_on_a_side_stream_and_from_another_thread():
    import threading

    x = nasty_floats((4, 3, 128, 128), torch.float16).cuda()
    expected = reference.postprocess_uint8(x)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        y = x * 1  # written on the side stream right before the kernel reads it
        got = kernels.postprocess_uint8(y, backend="cuda")
    torch.cuda.synchronize()
    assert torch.equal(got, expected)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("v", kernels.postprocess_uint8(x, backend="cuda")))
    t.start()
    t.join()
    assert torch.equal(out["v"], expected)
