"""kernels/groupnorm.cu through the g++ host shim (and, marked gpu, on CUDA) vs the torch reference.

The kernel and torch differ only in float32 arithmetic order: the order in which the mean and
variance are reduced (Welford partials per block, combined in a fixed order, against torch's
own Welford/cascade), and torch's folded formula ``y = x * (rstd * w) + (b - mean * rstd * w)``
against the kernel's ``((x - mean) * rstd) * w + b``. Both are float32 until the one rounding to
the dtype (then SiLU in float32 from that rounded value, rounded again), so the tolerance is,
per element,

    |got - ref| <= ulp(ref) + 8 * F,    F = 2^-24 * ((|x| * rstd + sqrt(mean^2 + var) * rstd) * |w| + |b|)

ulp(ref): one unit in the last place of the output dtype at |ref| (a float32 difference just
under a rounding boundary flips the rounding by one unit); F: one float32 rounding step of the
largest term either formula adds up (x * scale and mean * scale are ~|mean|/std when the mean is
large; the mean's own reduction error scales with sqrt(mean^2 + var)); 8 of those covers the
handful of float32 roundings on each side. With SiLU: ``ulp(ref) + 1.1 * (the group_norm
tolerance) + 2^-21 * |ref|``: |silu'| <= 1.1 and the SiLU input is the rounded group_norm
output; the last term is for expf (glibc's or CUDA's against torch's, a few float32 ulp).

Measured through the shim on ~2.5M elements per dtype, layout and input (seeded randn * 1.5, and
100 + randn * 1.5; 12 to 2048 values per group; 1 to 72 stat chunks per group, affine or not):

- beyond the 1 ulp, the largest difference was 3.4 F (float32), 1.5 F (float16), 0.7 F
  (bfloat16), out of the 8 F allowed; with SiLU at most 0.95 of its tolerance (float16: a one-ulp
  flip of the group_norm output where silu' ~ 1.1, plus the rounding of the SiLU output);
- float16/bfloat16, wherever |ref| >= 1/16: never more than 1 ulp from the reference (2-3 ulp
  with SiLU); overall 99.998-100% of the elements within 1 ulp for zero-mean inputs, 99.86%
  (float16) and 99.93% (bfloat16) for mean 100. The rest is close to zero, where F is larger
  than the dtype's spacing: at most 2-3 ulp for zero-mean inputs, up to 84-167 ulp for mean 100
  (float16: more than 2 ulp only where |y| < 2.3e-3, by less than 7e-6, F-sized);
- the fused SiLU equals ``F.silu`` of the kernel's own group_norm output bit for bit in
  float16/bfloat16 (float32: within 2 ulp, glibc's expf against torch's vectorized exp);
- against a float64 group_norm both are as accurate in float16/bfloat16 (0.25 ulp mean error:
  the final rounding); float32 mean error 1.6 ulp (kernel) vs 1.4 (torch) for zero-mean inputs,
  311 vs 386 ulp for mean 100.

torch's CPU channels_last GroupNorm reduces E[x^2] - mean^2 in float32: for mean 100 / std 1
it is off by up to 5% (0.05 absolute, float32). Large-mean channels_last inputs are therefore
compared with the reference on their NCHW copy (Welford); zero-mean ones with both.
"""

import pytest
import torch
import torch.nn.functional as F

from tests.unit.kernels import shim
from turbobatch import kernels
from turbobatch.kernels import build, launchers, ops, reference

EPS = 1e-6
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
MANTISSA = {torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}
LAYOUTS = ["nchw", "channels_last"]


def ulp(t: torch.Tensor) -> torch.Tensor:
    """Spacing of t's dtype at |t| (the subnormal spacing below the smallest normal), as float64."""
    a = t.double().abs()
    tiny = torch.finfo(t.dtype).smallest_normal
    return torch.exp2(torch.floor(torch.log2(a.clamp(min=tiny))) - MANTISSA[t.dtype])


def float32_floor(x: torch.Tensor, groups: int, w: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor:
    """F of the module docstring, per element of x (float64, x's shape)."""
    n, c = x.shape[:2]
    xd = x.double()
    flat = xd.reshape(n, groups, -1)
    mean, var = flat.mean(-1), flat.var(-1, unbiased=False)
    rstd = (var + EPS).rsqrt()
    per_channel = [n, c] + [1] * (x.ndim - 2)
    rstd_c = rstd.repeat_interleave(c // groups, 1).reshape(per_channel)
    size_c = ((mean.square() + var).sqrt() * rstd).repeat_interleave(c // groups, 1).reshape(per_channel)
    wa = (w.double().abs() if w is not None else torch.ones(c, dtype=torch.float64, device=x.device)).reshape(
        [1, c] + [1] * (x.ndim - 2)
    )
    ba = (b.double().abs() if b is not None else torch.zeros(c, dtype=torch.float64, device=x.device)).reshape(
        [1, c] + [1] * (x.ndim - 2)
    )
    return 2.0**-24 * ((xd.abs() * rstd_c + size_c) * wa + ba)


def check(got: torch.Tensor, ref_gn: torch.Tensor, x: torch.Tensor, groups: int, w, b, silu: bool) -> float:
    """Assert the tolerance of the module docstring; return the fraction within 1 ulp."""
    tol = ulp(ref_gn) + 8 * float32_floor(x, groups, w, b)
    ref = ref_gn
    if silu:
        ref = F.silu(ref_gn)
        tol = ulp(ref) + 1.1 * tol + 2.0**-21 * ref.double().abs()
    assert got.shape == ref.shape and got.dtype == ref.dtype
    err = (got.double() - ref.double()).abs()
    worst = float((err / tol).max())
    assert worst <= 1.0, f"{got.dtype} silu={silu}: max |got - ref| is {worst:.2f} x the tolerance"
    return float((err <= ulp(ref)).double().mean())


def make(shape, dtype, affine="affine", mean=0.0, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = (mean + torch.randn(shape, generator=g) * 1.5).to(dtype)
    c = shape[1]
    w = (torch.randn(c, generator=g) * 0.8 + 0.5).to(dtype) if affine in ("affine", "weight") else None
    b = (torch.randn(c, generator=g) * 0.5).to(dtype) if affine in ("affine", "bias") else None
    return tuple(None if t is None else t.to(device) for t in (x, w, b))


def to_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


def same_format(a: torch.Tensor, b: torch.Tensor) -> bool:
    formats = [torch.contiguous_format] + ([torch.channels_last] if a.ndim == 4 else [])
    return all(a.is_contiguous(memory_format=f) == b.is_contiguous(memory_format=f) for f in formats)


def majority(dtype: torch.dtype, mean: float) -> float:
    """Least fraction of elements within 1 ulp of the reference asserted (float16/bfloat16)."""
    return 0.0 if dtype == torch.float32 else (0.999 if mean == 0 else 0.995)


# shape, groups (C/G = 2, 4, 3, 1, 4, 20), affine: 1x1 spatial, odd sizes, C > 256 and not a multiple
CASES = [
    ((2, 64, 7, 9), 32, "affine"),
    ((1, 32, 1, 1), 8, "none"),
    ((3, 96, 13, 5), 32, "affine"),
    ((2, 32, 6, 5), 32, "weight"),
    ((1, 128, 9, 7), 32, "bias"),
    ((1, 600, 9, 7), 30, "affine"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])) + f"-g{c[1]}-{c[2]}")
def test_matches_reference(shim_launch, dtype, layout, case):
    shape, groups, affine = case
    x, w, b = make(shape, dtype, affine)
    xin = to_layout(x, layout)
    for silu in (False, True):
        got = launchers.group_norm(xin, groups, w, b, EPS, silu, shim_launch)
        direct = reference.group_norm(xin, groups, w, b, EPS, silu)  # torch's own kernel for this layout
        assert same_format(got, direct) and same_format(got, xin)  # memory format kept, as torch's
        assert check(got, reference.group_norm(x, groups, w, b, EPS), x, groups, w, b, silu) >= majority(dtype, 0)
        assert check(got, reference.group_norm(xin, groups, w, b, EPS), x, groups, w, b, silu) >= majority(dtype, 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_large_mean_and_several_chunks(shim_launch, monkeypatch, dtype, layout):
    """x = 100 + 1.5 randn: Welford numerics, with several stat chunks per group combined."""
    monkeypatch.setattr(launchers, "GN_STATS_ELEMS", 512)
    x, w, b = make((2, 64, 24, 20), dtype, mean=100.0, seed=1)
    for silu in (False, True):
        got = launchers.group_norm(to_layout(x, layout), 32, w, b, EPS, silu, shim_launch)
        stats_call = shim_launch.calls[-3]
        assert stats_call[0].startswith("gn_stats_") and stats_call[1][0] > 1  # several chunks per image
        assert check(got, reference.group_norm(x, 32, w, b, EPS), x, 32, w, b, silu) >= majority(dtype, 100.0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_default_chunking_combines_chunks(shim_launch, layout):
    x, w, b = make((1, 64, 96, 96), torch.float16, seed=2)  # 18432 values per group: > GN_STATS_ELEMS
    got = launchers.group_norm(to_layout(x, layout), 32, w, b, EPS, True, shim_launch)
    assert shim_launch.calls[-3][1][0] >= 2
    assert check(got, reference.group_norm(x, 32, w, b, EPS), x, 32, w, b, True) >= majority(torch.float16, 0)


def test_3d_and_5d_inputs(shim_launch):
    x, w, b = make((2, 64, 50), torch.bfloat16, seed=3)
    got = launchers.group_norm(x, 16, w, b, EPS, True, shim_launch)
    assert got.is_contiguous()
    check(got, reference.group_norm(x, 16, w, b, EPS), x, 16, w, b, True)
    nlc = x.transpose(1, 2).contiguous().transpose(1, 2)  # [N, C, L] view of [N, L, C] memory
    got = launchers.group_norm(nlc, 16, w, b, EPS, True, shim_launch)
    assert got.is_contiguous() and reference.group_norm(nlc, 16, w, b, EPS).is_contiguous()  # as torch
    check(got, reference.group_norm(x, 16, w, b, EPS), x, 16, w, b, True)
    x5, w5, b5 = make((1, 32, 3, 4, 5), torch.float16, seed=4)
    cl3d = x5.to(memory_format=torch.channels_last_3d)
    got = launchers.group_norm(cl3d, 8, w5, b5, EPS, False, shim_launch)
    assert shim_launch.calls[-1][0] == "gn_apply_nhwc_f16" and got.stride() == cl3d.stride()
    check(got, reference.group_norm(x5, 8, w5, b5, EPS), x5, 8, w5, b5, False)


def test_non_contiguous_input(shim_launch):
    x, w, b = make((2, 64, 9, 11), torch.float32, seed=5)
    view = x.transpose(2, 3)  # neither NCHW- nor channels_last-contiguous
    got = launchers.group_norm(view, 32, w, b, EPS, False, shim_launch)
    assert got.is_contiguous()
    check(got, reference.group_norm(view.contiguous(), 32, w, b, EPS), view.contiguous(), 32, w, b, False)


def test_wide_channels_last_runs_as_nchw_and_keeps_its_format(shim_launch):
    c = launchers.GN_MAX_J * launchers.TB_BLOCK + 32
    x, w, b = make((1, c, 3, 2), torch.float16, seed=6)
    xin = to_layout(x, "channels_last")
    got = launchers.group_norm(xin, 32, w, b, EPS, True, shim_launch)
    assert shim_launch.calls[-1][0] == "gn_apply_nchw_f16"
    assert got.is_contiguous(memory_format=torch.channels_last)
    check(got, reference.group_norm(x, 32, w, b, EPS), x, 32, w, b, True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_fused_silu_is_silu_of_the_rounded_group_norm(shim_launch, dtype, layout):
    x, w, b = make((2, 96, 11, 7), dtype, seed=7)
    xin = to_layout(x, layout)
    plain = launchers.group_norm(xin, 32, w, b, EPS, False, shim_launch)
    fused = launchers.group_norm(xin, 32, w, b, EPS, True, shim_launch)
    assert torch.equal(fused, F.silu(plain))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_deterministic(shim_launch, monkeypatch, layout):
    monkeypatch.setattr(launchers, "GN_STATS_ELEMS", 1024)
    x, w, b = make((2, 64, 20, 20), torch.float16, seed=8)
    xin = to_layout(x, layout)
    first = launchers.group_norm(xin, 32, w, b, EPS, True, shim_launch)
    second = launchers.group_norm(xin, 32, w, b, EPS, True, shim_launch)
    assert torch.equal(first.view(torch.int16), second.view(torch.int16))


def test_constants_match_the_cuda_source():
    text = (build.KERNEL_DIR / "groupnorm.cu").read_text()
    assert f"#define TB_GN_MAXJ {launchers.GN_MAX_J} " in text


def test_empty_input_launches_nothing(shim_launch):
    before = len(shim_launch.calls)
    x = torch.zeros((0, 32, 4, 4), dtype=torch.float16).to(memory_format=torch.channels_last)
    got = launchers.group_norm(x, 8, None, None, EPS, True, shim_launch)
    assert got.shape == x.shape and len(shim_launch.calls) == before


def test_rejects_bad_inputs(shim_launch):
    x = torch.zeros(2, 32, 4, 4)
    w = torch.ones(32)
    cases = [
        (ValueError, "expected \\[N, C, \\*spatial\\]", (torch.zeros(2, 32), 8, None, None)),
        (ValueError, "32 channels do not split into 6 groups", (x, 6, None, None)),
        (ValueError, "do not split into 0 groups", (x, 0, None, None)),
        (TypeError, "integer", (x, 8.0, None, None)),
        (TypeError, "dtype torch.float64", (x.double(), 8, None, None)),
        (TypeError, "dtype torch.int32", (x.int(), 8, None, None)),
        (ValueError, "weight must have shape \\(32,\\)", (x, 8, torch.ones(33), None)),
        (ValueError, "bias must have shape \\(32,\\)", (x, 8, w, torch.ones(1, 32))),
        (TypeError, "weight dtype torch.float16 differs", (x, 8, w.half(), None)),
        (TypeError, "bias must be a tensor", (x, 8, w, [0.0] * 32)),
        (ValueError, "one value per group", (torch.zeros(1, 32, 1, 1), 32, None, None)),
    ]
    for error, message, (xx, groups, ww, bb) in cases:
        with pytest.raises(error, match=message):
            launchers.group_norm(xx, groups, ww, bb, EPS, False, shim_launch)
    with pytest.raises(ValueError):  # the reference refuses it too
        reference.group_norm(torch.zeros(1, 32, 1, 1), 32, None, None, EPS)


def test_ops_dispatch():
    x, w, b = make((2, 64, 5, 6), torch.float16, seed=9)
    assert torch.equal(kernels.group_norm(x, 32, w, b, silu=True), reference.group_norm(x, 32, w, b, 1e-6, True))
    assert torch.equal(kernels.group_norm(x, 32, w, b, backend="reference"), reference.group_norm(x, 32, w, b, 1e-6))
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        kernels.group_norm(x, 32, w, b, backend="cuda")


# ---- on a GPU: the kernel vs torch's own CUDA ops, the same tolerances ----------------------

gpu = pytest.mark.gpu
CUDA_OK, CUDA_WHY = ops.cuda_status()
needs_gpu = pytest.mark.skipif(not CUDA_OK, reason=f"no usable CUDA/pycuda: {CUDA_WHY}")
# The SD/SDXL VAE decoder's GroupNorms (32 groups, eps 1e-6) for 4 images of 512x512.
DECODER_SHAPES = [(4, 512, 64, 64), (4, 512, 128, 128), (4, 256, 256, 256), (4, 128, 512, 512)]


@gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", DECODER_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gpu_matches_torch_cuda(dtype, layout, shape):
    x, w, b = make(shape, dtype, seed=10, device="cuda")
    xin = to_layout(x, layout)
    ref_gn = F.group_norm(xin, 32, w, b, EPS)  # torch's CUDA kernel (channels_last: converted inside)
    for silu in (False, True):
        got = kernels.group_norm(xin, 32, w, b, EPS, silu=silu, backend="cuda")
        assert same_format(got, xin)
        assert check(got, ref_gn, x, 32, w, b, silu) >= majority(dtype, 0)
        if silu:
            plain = kernels.group_norm(xin, 32, w, b, EPS, backend="cuda")
            assert float(((got.double() - F.silu(plain).double()).abs() / ulp(F.silu(plain))).max()) <= 1.0
    again = kernels.group_norm(xin, 32, w, b, EPS, silu=True, backend="cuda")
    assert torch.equal(got.view(torch.int16), again.view(torch.int16))  # deterministic


@gpu
@needs_gpu
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gpu_large_mean_float32_and_3d(layout):
    x, w, b = make((4, 128, 96, 80), torch.float16, mean=100.0, seed=11, device="cuda")
    got = kernels.group_norm(to_layout(x, layout), 32, w, b, EPS, silu=True, backend="cuda")
    assert check(got, F.group_norm(x, 32, w, b, EPS), x, 32, w, b, True) >= majority(torch.float16, 100.0)
    x, w, b = make((4, 256, 33, 17), torch.float32, seed=12, device="cuda")
    got = kernels.group_norm(to_layout(x, layout), 32, w, b, EPS, backend="cuda")
    check(got, F.group_norm(x, 32, w, b, EPS), x, 32, w, b, False)
    x, w, b = make((3, 64, 1000), torch.bfloat16, seed=13, device="cuda")
    check(
        kernels.group_norm(x, 16, w, b, EPS, silu=True, backend="cuda"),
        F.group_norm(x, 16, w, b, EPS),
        x,
        16,
        w,
        b,
        True,
    )


@gpu
@needs_gpu
def test_gpu_on_a_side_stream():
    x, w, b = make((4, 256, 64, 64), torch.float16, seed=14, device="cuda")
    ref_gn = reference.group_norm(x, 32, w, b, EPS)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        y = to_layout(x * 1, "channels_last")  # written on the side stream right before the kernel reads it
        got = kernels.group_norm(y, 32, w, b, EPS, silu=True, backend="cuda")
    torch.cuda.synchronize()
    check(got, ref_gn, x, 32, w, b, True)


@gpu
@needs_gpu
@pytest.mark.skipif(shim.gxx() is None, reason="g++ not found: cannot build the host shim")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gpu_equals_the_host_shim_bit_for_bit(layout):
    """Without SiLU (expf differs between CUDA and glibc) the GPU computes the shim's very bits."""
    launch = shim.ShimLaunch()
    for dtype in DTYPES:
        x, w, b = make((2, 96, 23, 19), dtype, seed=15)
        xin = to_layout(x, layout)
        on_cpu = launchers.group_norm(xin, 32, w, b, EPS, False, launch)
        on_gpu = kernels.group_norm(xin.cuda(), 32, w.cuda(), b.cuda(), EPS, backend="cuda").cpu()
        assert torch.equal(on_gpu, on_cpu), dtype
