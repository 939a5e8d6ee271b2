"""workers/speedups/decoder_ops.py on CPU: the fold is exact math, and each rewrite (with the decoder's norm fusion,
workers/speedups/norm_fusion.py) leaves decoded images put."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderTiny
from diffusers.models.upsampling import Upsample2D
from torch import nn

from tests.conftest import REPO
from turbobatch.kernels import postprocess_uint8
from turbobatch.models.tiny import tiny_model_path
from turbobatch.workers.speedups import decoder_ops as ops
from turbobatch.workers.speedups.norm_fusion import fuse_group_norms

SIZES = [(1, 1), (1, 5), (2, 3), (7, 4), (5, 5), (8, 8), (13, 6)]  # odd, even, non-square
CHANNELS = [(1, 1), (3, 5), (8, 8), (16, 4)]
ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-9}  # unit roundoff u


def upsample_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


@pytest.mark.parametrize("cin,cout", CHANNELS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_fold_equals_upsample_then_conv(cin, cout, dtype, tol):
    torch.manual_seed(cin * 100 + cout)
    for bias in (True, False):
        conv = nn.Conv2d(cin, cout, 3, padding=1, bias=bias).to(dtype)
        folded = ops.FoldedUpsampleConv(conv)
        assert folded.weight.shape == (cin, cout, 4, 4) and folded.weight.dtype == dtype
        for h, w in SIZES:
            x = torch.randn(2, cin, h, w, dtype=dtype)
            want = upsample_conv(conv, x)
            for inp in (x, x.contiguous(memory_format=torch.channels_last)):
                got = folded(inp)
                assert got.shape == want.shape == (2, cout, 2 * h, 2 * w)
                assert (got - want).abs().max().item() <= tol, (h, w, bias)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fold_low_precision_within_rounding_bound(dtype):
    """Folded 4x4 weights are the exact folded sums rounded once to ``dtype`` (checked exactly).
    Each output then sums 4 * cin products and the bias; with u the unit roundoff, the
    recursive-summation bound with the weights' and the output's rounding is
    u * |y| + (4 * cin + 1) * u * (|K| (*) |x| + |b|). (On CPU with fp32 accumulation the error stays within
    1.6u of u * (|K| (*) |x| + |y|); a CPU without AVX-512 accumulates the bfloat16 transposed
    convolution in bfloat16 and reached 4.3u of it at cin = 1, within this bound.)"""
    torch.manual_seed(7)
    u = ROUNDOFF[dtype]
    for cin, cout in [*CHANNELS, (64, 64)]:
        conv = nn.Conv2d(cin, cout, 3, padding=1).to(dtype)
        exact_conv = copy.deepcopy(conv).double()
        k_exact = ops.FoldedUpsampleConv(exact_conv).weight
        folded = ops.FoldedUpsampleConv(conv)
        assert torch.equal(folded.weight, k_exact.to(dtype))  # one rounding of the exact fold
        bias = exact_conv.bias.abs()[None, :, None, None]
        for h, w in SIZES:
            x = torch.randn(2, cin, h, w).to(dtype)
            exact = upsample_conv(exact_conv, x.double())
            got = folded(x).double()
            terms = F.conv_transpose2d(x.double().abs(), k_exact.abs(), stride=2, padding=1) + bias
            bound = u * exact.abs() + (4 * cin + 1) * u * terms
            assert ((got - exact).abs() <= bound).all(), (cin, cout, h, w)


def test_fold_output_size():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    folded, x = ops.FoldedUpsampleConv(conv), torch.randn(1, 4, 3, 5)
    assert torch.equal(folded(x, output_size=(6, 10)), folded(x))  # what the 2x interpolate gives anyway
    with pytest.raises(ValueError, match="2x upsample only"):
        folded(x, output_size=(7, 10))


# -- what is refused --------------------------------------------------------------------------
class _OwnForward(Upsample2D):
    def forward(self, hidden_states, output_size=None, *args, **kwargs):
        return super().forward(hidden_states, output_size) * 2


@pytest.mark.parametrize(
    "make",
    [
        lambda: Upsample2D(8, use_conv=False),
        lambda: Upsample2D(8, use_conv_transpose=True),
        lambda: Upsample2D(8, use_conv=True, interpolate=False),
        lambda: Upsample2D(8, use_conv=True, norm_type="rms_norm", eps=1e-6, elementwise_affine=True),
        lambda: Upsample2D(8, use_conv=True, kernel_size=5, padding=2),
        lambda: Upsample2D(8, use_conv=True, padding=0),
        lambda: _OwnForward(8, use_conv=True),
        lambda: nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(8, 8, 3, padding=1)),
        lambda: nn.Sequential(nn.Upsample(scale_factor=3, mode="nearest"), nn.Conv2d(8, 8, 3, padding=1)),
        lambda: nn.Sequential(nn.Upsample(size=(8, 8), mode="nearest"), nn.Conv2d(8, 8, 3, padding=1)),
        lambda: nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(8, 8, 3, padding=1, stride=2)),
        lambda: nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(8, 8, 3, padding=1, groups=2)),
        lambda: nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)),
    ],
)
def test_fold_refuses_other_structures(make):
    module = nn.ModuleList([make()])
    before = repr(module)
    assert ops.fold_upsamplers(module) == 0
    assert repr(module) == before


def test_fold_accepts_the_eligible_forms():
    tiny_style = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(8, 4, 3, padding=1, bias=False))
    module = nn.ModuleList([Upsample2D(8, use_conv=True), Upsample2D(8, use_conv=True, name="Conv2d_0"), tiny_style])
    x = torch.randn(1, 8, 5, 6)
    want = [m(x) for m in module]
    assert ops.fold_upsamplers(module) == 3
    assert isinstance(module[0], ops.FoldedUpsampleConv) and isinstance(module[2][1], nn.Identity)
    assert all(torch.allclose(m(x), w, atol=1e-5) for m, w in zip(module, want))
    assert ops.fold_upsamplers(module) == 0


# -- the tiny models ----------------------------------------------------------------------------
def load(model: str) -> nn.Module:
    if model == "tiny-taesd":
        return AutoencoderTiny.from_pretrained(tiny_model_path(model)).eval()
    return AutoencoderKL.from_pretrained(tiny_model_path(model), subfolder="vae").eval()


MODELS = ["tiny-sd-turbo", "tiny-sdxl-turbo", "tiny-taesd"]
# Decoder structure: one upsampler (2 up blocks); 6 ResnetBlock2D x 2 + mid attention + conv_norm_out.
EXPECTED = {"tiny-sd-turbo": (1, 14), "tiny-sdxl-turbo": (1, 14), "tiny-taesd": (1, 0)}
TRANSFORMS = {"fold": ops.fold_upsamplers, "fuse": fuse_group_norms, "channels_last": ops.to_channels_last}
ALL = ("fold", "fuse", "channels_last")
COMBOS = [("fold",), ("fuse",), ("channels_last",), ALL, ALL[::-1]]  # all three, in either order


@pytest.fixture(scope="module")
def vaes() -> dict[str, nn.Module]:
    return {m: load(m) for m in MODELS}


def latents(dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(2, 4, 13, 22, generator=torch.Generator().manual_seed(0)).to(dtype)  # odd, non-square


def decode_uint8(vae: nn.Module, z: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return postprocess_uint8(vae.decode(z, return_dict=False)[0]).int()  # as workers/batches.py calls it


@pytest.mark.parametrize("model", MODELS)
def test_counts_follow_structure(vaes, model):
    vae = copy.deepcopy(vaes[model])
    upsamplers = sum(isinstance(m, Upsample2D) or type(m) is nn.Upsample for m in vae.decoder.modules())
    norms = sum(type(m) is nn.GroupNorm for m in vae.decoder.modules())
    assert (upsamplers, norms) == EXPECTED[model]
    assert (ops.fold_upsamplers(vae), fuse_group_norms(vae)) == EXPECTED[model]
    left = [m for m in vae.decoder.modules() if type(m) in (nn.GroupNorm, nn.SiLU, nn.Upsample, Upsample2D)]
    assert not left, left  # every GroupNorm, SiLU and upsampler of these decoders was eligible
    assert (ops.fold_upsamplers(vae), fuse_group_norms(vae)) == (0, 0)  # a second application: nothing


@pytest.mark.parametrize("model", ["sd-turbo", "sdxl-turbo"])
def test_counts_full_size_configs(model):
    """The real VAE architectures (models/configs, on the meta device: no weights): 3 upsamplers;
    GroupNorms: (2 mid + 4 up blocks x 3) ResnetBlock2D x 2 + mid attention + conv_norm_out = 30."""
    config = json.loads((REPO / "turbobatch" / "models" / "configs" / model / "vae.json").read_text())
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(config)
    assert (ops.fold_upsamplers(vae), fuse_group_norms(vae)) == (3, 30)
    assert (ops.fold_upsamplers(vae), fuse_group_norms(vae)) == (0, 0)
    with torch.device("meta"):
        assert ops.fold_upsamplers(AutoencoderTiny()) == 3  # taesd's decoder: 4 blocks, 3 upsamples


@pytest.mark.parametrize("combo", COMBOS, ids="+".join)
@pytest.mark.parametrize("model", MODELS)
def test_decode_float32(vaes, model, combo):
    vae, z = vaes[model], latents(torch.float32)
    want = decode_uint8(vae, z)
    assert want.float().std() > 5  # not flat: the comparison means something
    changed = copy.deepcopy(vae)
    for name in combo:
        TRANSFORMS[name](changed)
    got = decode_uint8(changed, z)
    diff = (got - want).abs()
    share = (diff > 0).float().mean().item()
    print(f"\n{model} float32 {'+'.join(combo)}: max {diff.max().item()}, differing {share:.4%}")
    assert diff.max().item() <= 1
    if combo == ("fuse",):
        assert torch.equal(got, want)  # the same torch ops on CPU
    again = copy.deepcopy(changed)  # applying twice: nothing more is replaced, images identical
    assert all(TRANSFORMS[name](again) in (0, None) for name in combo)
    assert torch.equal(decode_uint8(again, z), got)


@pytest.mark.parametrize("combo", COMBOS, ids="+".join)
@pytest.mark.parametrize("model", ["tiny-sd-turbo", "tiny-taesd"])  # tiny-sdxl-turbo's VAE is the same network
def test_decode_bfloat16(vaes, model, combo):
    """bfloat16 keeps 8 significant bits: one rounding of an output near 1 is up to 0.5 uint8 level,
    and the stock bf16 decode already differs from float32 by up to 3 levels on ~46% of pixels.
    Rounding moves (folded taps are rounded sums; other accumulation orders), so the rewrite must
    stay within that noise: no further than 1 level beyond the stock bf16 decode's own distance
    from float32, and at most 3 levels from the stock bf16 decode."""
    vae32, z = vaes[model], latents(torch.float32)
    vae16 = copy.deepcopy(vae32).to(torch.bfloat16)
    exact, stock = decode_uint8(vae32, z), decode_uint8(vae16, z.bfloat16())
    changed = copy.deepcopy(vae16)
    for name in combo:
        TRANSFORMS[name](changed)
    assert all(p.dtype == torch.bfloat16 for p in changed.parameters())
    got = decode_uint8(changed, z.bfloat16())
    diff, floor = (got - stock).abs(), (stock - exact).abs().max().item()
    share = (diff > 0).float().mean().item()
    print(
        f"\n{model} bfloat16 {'+'.join(combo)}: max {diff.max().item()}, differing {share:.4%}; "
        f"vs float32 {(got - exact).abs().max().item()} (stock bf16: {floor})"
    )
    assert diff.max().item() <= 3
    assert (got - exact).abs().max().item() <= floor + 1
    if combo == ("fuse",):
        assert torch.equal(got, stock)
    upcast = copy.deepcopy(changed).to(torch.float32)  # the renderer's float32 re-decode copy
    assert torch.isfinite(upcast.decode(z, return_dict=False)[0]).all()


def test_channels_last_layout(vaes):
    vae = copy.deepcopy(vaes["tiny-sd-turbo"])
    ops.to_channels_last(vae)
    ops.to_channels_last(vae)
    assert len(vae.decoder._forward_pre_hooks) == 1
    assert vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    vae.decoder.conv_in.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    ops.fold_upsamplers(vae)  # folded from channels_last weights: stays channels_last
    folded = [m for m in vae.decoder.modules() if isinstance(m, ops.FoldedUpsampleConv)]
    assert folded and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in folded)
    with torch.inference_mode():
        out = vae.decode(latents(torch.float32), return_dict=False)[0]
    assert seen == [True] and out.is_contiguous(memory_format=torch.channels_last)
