"""kernels/adanorm.cu through the g++ host shim (and, marked gpu, on CUDA) vs the torch reference.

The kernel rounds to the dtype exactly where diffusers' torch code does (reference.modulated_norm and
reference.gated_residual spell the steps out) and computes everything else in float32, so it differs
from torch only in the float32 reduction of each row (sum of squares, mean: a fixed tree against
torch's order; on CUDA also torch's approximate ``rsqrt`` against our IEEE ``1 / sqrtf``). The
tolerance, per element, is

    |got - ref| <= ulp(ref) + ulp_dtype(M) + 8 * 2^-24 * M

M: the magnitude of the terms the output adds up, in float64 (modulated norm: ``|n| * (1 + |scale|)
+ |shift|`` with ``|n| = |x| * rstd * |w|`` for RMSNorm and ``(|x| + sqrt(mean^2 + var)) * rstd``
for LayerNorm, whose mean carries the reduction error of values of that size; residual: ``|x| +
|gate * ynorm(y)|``).
ulp(ref): a rstd one float32 ulp away flips a rounding to the dtype by one unit now and then;
ulp_dtype(M): such a flip in an intermediate (before ``+ shift``, or in ``gate * ynorm(y)``) stays
one unit of that intermediate where the sum cancels to a smaller value; 8 * 2^-24 * M: float32
(bfloat16/float16 inputs never reach it: their ulp is 2^13 to 2^16 times larger).

Measured through the shim against torch's CPU ops (3 seeds; rows of 40, 840, 3072 and 3840
channels; x = 2 randn and 20 + 2 randn; every op and residual form below; 250,000 outputs each): every
element within the bound. float16/bfloat16: 99.77% to 100% bit for bit (RMSNorm forms 99.98-100%, the
LayerNorm ones, whose mean torch reduces otherwise, 99.77-99.92%), the rest one unit of an
intermediate. float32: at most 0.65 of the 8 * 2^-24 * M term beyond 1 ulp. On a GPU against torch's
CUDA ops: not measured yet (no GPU lent so far); test_matches_torch_on_cuda asserts the same bound there.
"""

import pytest
import torch

from turbobatch import kernels
from turbobatch.kernels import build, launchers, ops, reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
MANTISSA = {torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}


def ulp(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Spacing of dtype (t's by default) at |t|, as float64."""
    dtype = dtype or t.dtype
    a = t.double().abs()
    tiny = torch.finfo(dtype).smallest_normal
    return torch.exp2(torch.floor(torch.log2(a.clamp(min=tiny))) - MANTISSA[dtype])


def norm_magnitude(x, norm, weight, eps, scale, shift) -> torch.Tensor:
    xd = x.double()
    if norm == "layer":
        mean, var = xd.mean(-1, keepdim=True), xd.var(-1, unbiased=False, keepdim=True)
        n = (xd.abs() + (mean.square() + var).sqrt()) * (var + eps).rsqrt()
    else:
        n = xd.abs() * (xd.square().mean(-1, keepdim=True) + eps).rsqrt()
    if weight is not None:
        n = n * weight.double().abs()
    if scale is not None:
        n = n * (1 + scale.double().abs())
    return n + (shift.double().abs() if shift is not None else 0)


def residual_magnitude(x, y, gate, y_norm, y_weight, y_eps) -> torch.Tensor:
    t = y.double()
    if y_norm:
        t = t * (t.square().mean(-1, keepdim=True) + y_eps).rsqrt()
        if y_weight is not None:
            t = t * y_weight.double()
    if gate is not None:
        t = t * gate.double()
    return x.double().abs() + t.abs()


def check(got: torch.Tensor, ref: torch.Tensor, magnitude: torch.Tensor, what: str) -> tuple[float, float]:
    """Assert the module docstring's bound; return (fraction bit-equal, worst share of the float32 term)."""
    assert got.shape == ref.shape and got.dtype == ref.dtype, what
    err = (got.double() - ref.double()).abs()
    both_nan = torch.isnan(got) & torch.isnan(ref)
    err = torch.where(both_nan, torch.zeros_like(err), err)
    f32 = 8 * 2.0**-24 * magnitude
    tol = ulp(ref) + ulp(magnitude, got.dtype) + f32
    worst = float((err / tol).max()) if err.numel() else 0.0
    assert worst <= 1.0, f"{what} {got.dtype}: max |got - ref| is {worst:.2f} x the tolerance"
    beyond = (err - ulp(ref)).clamp(min=0) / f32
    return float(((err == 0) | both_nan).double().mean()), float(beyond.max()) if err.numel() else 0.0


def make(b, s, d, dtype, seed=0, sets=2):
    """x, y and a FLUX.2-style modulation [B, 1, 3 * sets * D] split into (shift, scale, gate) chunks
    (strided views, as Flux2Modulation.split gives them), and two norm weights."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(b, s, d, generator=g) * 2).to(dtype)
    y = (torch.randn(b, s, d, generator=g) * 3).to(dtype)
    mod = (torch.randn(b, 3 * sets * d, generator=g) * 0.5).to(dtype).unsqueeze(1)
    w = (torch.randn(d, generator=g) * 0.3 + 1).to(dtype)
    w2 = (torch.randn(d, generator=g) * 0.3 + 1).to(dtype)
    return x, y, mod.chunk(3 * sets, dim=-1), w, w2


# (batch, tokens, channels): channels below one block, not a multiple of the block, the most one block takes
SHAPES = [(2, 5, 40), (2, 3, 840), (1, 2, launchers.AN_MAX_J * launchers.TB_BLOCK)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_modulated_norm_matches_reference(shim_launch, dtype, shape):
    x, _, (shift, scale, *_), w, _ = make(*shape, dtype)
    exact = []
    for norm, weight, eps, sh in (("rms", w, 1e-5, None), ("rms", None, 1e-5, shift), ("layer", None, 1e-6, shift)):
        for sc in (scale, None):
            got = launchers.adanorm(x, None, None, False, None, 0.0, False, norm, weight, eps, sc, sh, shim_launch)
            assert got[0] is None
            ref = reference.modulated_norm(x, norm, weight, eps, sc, sh)
            exact.append(check(got[1], ref, norm_magnitude(x, norm, weight, eps, sc, sh), norm)[0])
    if dtype != torch.float32:
        assert min(exact) >= 0.995  # the same roundings as torch's CPU ops, in the same places


# The blocks' residuals: Z-Image (RMSNorm on y, tanh gate, RMSNorm + scale after; unmodulated refiners:
# no gate, no scale; the last one: no norm after), FLUX.2 (plain y, gate, LayerNorm + scale + shift
# after; single blocks and the text stream: clip, no norm after).
RESIDUALS = {
    "z-image": dict(y_norm=True, gate=True, clip=False, norm="rms", scale=True, shift=False),
    "z-image-last": dict(y_norm=True, gate=True, clip=False, norm=None, scale=False, shift=False),
    "z-image-unmodulated": dict(y_norm=True, gate=False, clip=False, norm="rms", scale=False, shift=False),
    "flux2": dict(y_norm=False, gate=True, clip=False, norm="layer", scale=True, shift=True),
    "flux2-last": dict(y_norm=False, gate=True, clip=True, norm=None, scale=False, shift=False),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES[:2], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", sorted(RESIDUALS))
def test_gated_residual_matches_reference(shim_launch, dtype, shape, case):
    c = RESIDUALS[case]
    x, y, (shift, scale, gate, *_), w, w2 = make(*shape, dtype)
    gate = (gate.tanh() if c["y_norm"] else gate) if c["gate"] else None
    weight = w if c["norm"] == "rms" else None
    kw = dict(
        y_norm=c["y_norm"],
        y_weight=w2 if c["y_norm"] else None,
        y_eps=1e-5,
        clip=c["clip"],
        norm=c["norm"],
        weight=weight,
        eps=1e-5 if c["norm"] == "rms" else 1e-6,
        scale=scale if c["scale"] else None,
        shift=shift if c["shift"] else None,
    )
    x_new, h = launchers.adanorm(
        x,
        y,
        gate,
        kw["y_norm"],
        kw["y_weight"],
        kw["y_eps"],
        kw["clip"],
        kw["norm"],
        weight,
        kw["eps"],
        kw["scale"],
        kw["shift"],
        shim_launch,
    )
    ref_x, ref_h = reference.gated_residual(x, y, gate, **kw)
    exact = [check(x_new, ref_x, residual_magnitude(x, y, gate, kw["y_norm"], kw["y_weight"], 1e-5), case)[0]]
    if c["norm"] is None:
        assert h is None and ref_h is None
    else:  # the norm of the kernel's own x_new (x_new itself is checked above)
        ref_own = reference.modulated_norm(x_new, c["norm"], weight, kw["eps"], kw["scale"], kw["shift"])
        mag = norm_magnitude(x_new, c["norm"], weight, kw["eps"], kw["scale"], kw["shift"])
        exact.append(check(h, ref_own, mag, case + " h")[0])
    if dtype != torch.float32:
        assert min(exact) >= 0.995


def test_per_token_modulation_and_broadcast_fall_back_to_one_row_each(shim_launch):
    """Z-Image's noise_mask path selects scale/gate per token ([B, S, D]); a [1, 1, D] modulation is
    shared by every row; a [B, D] one broadcasts per token position as torch broadcasts it."""
    x, y, (shift, scale, gate, *_), w, w2 = make(2, 4, 72, torch.bfloat16, seed=3)
    per_token = torch.randn(2, 4, 72, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    for sc in (per_token, scale[:1], per_token[0, :2, :].expand(2, 2, 72)[:, :1], scale[:, 0, :][:, None]):
        got = launchers.adanorm(x, y, gate, True, w2, 1e-5, False, "rms", w, 1e-5, sc, None, shim_launch)
        ref = reference.gated_residual(x, y, gate, y_norm=True, y_weight=w2, norm="rms", weight=w, eps=1e-5, scale=sc)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    x4, _, (shift4, scale4, *_), _, _ = make(1, 4, 72, torch.bfloat16, seed=4)  # [B, D] vs [1, 4, D]: per position
    sc2 = torch.randn(4, 72, generator=torch.Generator().manual_seed(6)).to(torch.bfloat16)
    got = launchers.adanorm(x4, None, None, False, None, 0.0, False, "layer", None, 1e-6, sc2, None, shim_launch)[1]
    assert torch.equal(got, reference.modulated_norm(x4, "layer", None, 1e-6, sc2))


def test_float16_clip_and_non_finite_values(shim_launch):
    x, y, (_, _, gate, *_), _, _ = make(1, 3, 64, torch.float16, seed=7)
    y[0, 0, :4] = torch.tensor([60000.0, -60000.0, float("nan"), float("inf")], dtype=torch.float16)
    x[0, 0, :4] = torch.tensor([30000.0, -30000.0, 1.0, 1.0], dtype=torch.float16)
    g = torch.ones_like(gate)
    for clip in (False, True):
        got = launchers.adanorm(x, y, g, False, None, 0.0, clip, None, None, 0.0, None, None, shim_launch)[0]
        ref = reference.gated_residual(x, y, g, clip=clip)[0]
        assert torch.equal(got.isnan(), ref.isnan())
        assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(ref))
        assert (got[0, 0, :2].abs() == (65504.0 if clip else float("inf"))).all()


def test_bad_inputs_are_named():
    x = torch.randn(2, 3, 8)
    launch = None  # never reached
    with pytest.raises(ValueError, match="at most 4096"):
        launchers.adanorm(
            torch.randn(1, 2, 4097), None, None, False, None, 0, False, "rms", None, 1e-6, None, None, launch
        )
    with pytest.raises(TypeError, match="weight dtype"):
        launchers.adanorm(
            x, None, None, False, None, 0, False, "rms", torch.ones(8, dtype=torch.float16), 1e-6, None, None, launch
        )
    with pytest.raises(ValueError, match="takes no weight"):
        launchers.adanorm(x, None, None, False, None, 0, False, "layer", torch.ones(8), 1e-6, None, None, launch)
    with pytest.raises(ValueError, match="nothing to compute"):
        launchers.adanorm(x, None, None, False, None, 0, False, None, None, 1e-6, None, None, launch)
    with pytest.raises(ValueError, match="end in 8 channels"):
        launchers.adanorm(x, None, None, False, None, 0, False, "rms", None, 1e-6, torch.ones(2, 1, 4), None, launch)
    with pytest.raises(ValueError, match="norm must be"):
        reference.modulated_norm(x, "group", None, 1e-6)


def test_ops_on_cpu_are_the_reference():
    x, y, (shift, scale, gate, *_), w, w2 = make(2, 3, 16, torch.bfloat16)
    assert torch.equal(
        ops.modulated_norm(x, "layer", None, 1e-6, scale, shift),
        reference.modulated_norm(x, "layer", None, 1e-6, scale, shift),
    )
    got = kernels.gated_residual(x, y, gate, y_norm=True, y_weight=w2, norm="rms", weight=w, eps=1e-5, scale=scale)
    want = reference.gated_residual(x, y, gate, y_norm=True, y_weight=w2, norm="rms", weight=w, eps=1e-5, scale=scale)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        ops.modulated_norm(x, "rms", w, backend="cuda")


def test_the_kernel_source_is_registered():
    assert build.KERNELS["adanorm.cu"] == ("adanorm_f32", "adanorm_f16", "adanorm_bf16")
    assert f"#define TB_AN_MAXJ {launchers.AN_MAX_J} " in (build.KERNEL_DIR / "adanorm.cu").read_text()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or kernels.BACKEND != "pycuda", reason="needs CUDA and pycuda")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_torch_on_cuda(dtype):
    """The kernel on a GPU against torch's CUDA ops, at a real row width (FLUX.2 klein: 3072;
    Z-Image: 3840), within the module docstring's bound."""
    for d, case in ((3840, "z-image"), (3072, "flux2")):
        x, y, (shift, scale, gate, *_), w, w2 = (
            t.cuda() if isinstance(t, torch.Tensor) else tuple(c.cuda() for c in t) for t in make(2, 64, d, dtype)
        )
        c = RESIDUALS[case]
        gate = gate.tanh() if c["y_norm"] else gate
        weight, eps = (w, 1e-5) if c["norm"] == "rms" else (None, 1e-6)
        kw = dict(
            y_norm=c["y_norm"],
            y_weight=w2 if c["y_norm"] else None,
            y_eps=1e-5,
            norm=c["norm"],
            weight=weight,
            eps=eps,
            scale=scale,
            shift=shift if c["shift"] else None,
        )
        x_new, h = ops.gated_residual(x, y, gate, backend="cuda", **kw)
        ref_x, _ = reference.gated_residual(x, y, gate, **kw)
        check(x_new, ref_x, residual_magnitude(x, y, gate, kw["y_norm"], kw["y_weight"], 1e-5), case)
        ref_h = reference.modulated_norm(x_new, c["norm"], weight, eps, scale, kw["shift"])
        check(h, ref_h, norm_magnitude(x_new, c["norm"], weight, eps, scale, kw["shift"]), case + " h")
