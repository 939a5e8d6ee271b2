"""workers/speedups/transformer_fusion.py (and fused_norms on these families' VAEs) on CPU.

kernels.modulated_norm / gated_residual are their torch references on CPU, which repeat diffusers'
ops: a patched tiny Z-Image or FLUX.2 transformer computes bit for bit what the stock one does. With
the kernel itself run through the host shim (the same .cu source a GPU runs) the output stays within
the kernel's bound, compounded over the blocks. The modules covered are counted on the real
architectures on the meta device.
"""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderKLFlux2, Flux2Transformer2DModel, ZImageTransformer2DModel
from diffusers.models.transformers.transformer_flux2 import Flux2SingleTransformerBlock, Flux2TransformerBlock
from diffusers.models.transformers.transformer_z_image import ZImageTransformerBlock
from torch import nn

from tests.unit.kernels import shim
from turbobatch import kernels
from turbobatch.kernels import launchers
from turbobatch.models.random_weights import config as random_config
from turbobatch.workers.speedups import norm_fusion, registry
from turbobatch.workers.speedups import transformer_fusion as tf

# -- the real architectures ---------------------------------------------------------------------
# The bundled --weights random configs (turbobatch/models/configs/; models/random_weights.py says
# where each value comes from).
Z_IMAGE, KLEIN = "Tongyi-MAI/Z-Image-Turbo", "black-forest-labs/FLUX.2-klein-4B"


def blocks(model: nn.Module, cls: type) -> int:
    return sum(type(m) is cls for m in model.modules())


def test_every_block_of_the_real_transformers_is_covered():
    """Z-Image-Turbo: 30 layers + 2 noise refiners + 2 context refiners = 34 blocks, 4 RMSNorms each;
    FLUX.2 klein 4B: 5 double-stream blocks (4 LayerNorms each) and 20 single-stream blocks (1)."""
    with torch.device("meta"):
        z = ZImageTransformer2DModel.from_config(random_config(Z_IMAGE, "transformer"))
        f = Flux2Transformer2DModel.from_config(random_config(KLEIN, "transformer"))
    assert z.config.dim == 3840 and f.inner_dim == 3072  # the row widths benchmarks/kernel_bench.py times
    assert blocks(z, ZImageTransformerBlock) == 34
    assert tf.fused_forwards(z) == {"ZImageTransformerBlock": 34}
    assert tf.fused_forwards(f) == {"Flux2TransformerBlock": 5, "Flux2SingleTransformerBlock": 20}
    assert tf.fused_forwards(z) == {} and tf.fused_forwards(f) == {}  # a second application: nothing
    assert max(z.config.dim, f.inner_dim) <= launchers.AN_MAX_J * launchers.TB_BLOCK  # rows the kernel takes


@pytest.mark.parametrize("cls, model", [(AutoencoderKL, Z_IMAGE), (AutoencoderKLFlux2, KLEIN)])
def test_every_group_norm_of_the_real_decoders_is_fused(cls, model):
    """fused_norms on these families' VAEs: 4 up blocks x 3 resnets x 2 + mid block (2 resnets x 2 +
    its attention's group_norm) + conv_norm_out = 30, as in SD's decoder."""
    with torch.device("meta"):
        vae = cls.from_config(random_config(model, "vae"))
    assert sum(type(m) is nn.GroupNorm for m in vae.decoder.modules()) == 30
    assert norm_fusion.fuse_group_norms(vae) == 30
    assert sum(type(m) is nn.GroupNorm for m in vae.decoder.modules()) == 0


def test_other_models_and_changed_blocks_are_left_alone():
    assert tf.fused_forwards(nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8))) == {}
    assert tf.fuse_transformer_norms(object()) == {}  # a pipeline without a transformer (sd-turbo)

    class Own(Flux2SingleTransformerBlock):
        def forward(self, *a, **k):
            return super().forward(*a, **k)

    own = Own(dim=16, num_attention_heads=2, attention_head_dim=8)
    affine = Flux2SingleTransformerBlock(dim=16, num_attention_heads=2, attention_head_dim=8)
    affine.norm = nn.LayerNorm(16)  # with weight and bias: not FLUX.2's
    z = ZImageTransformerBlock(0, 16, 2, 2, 1e-5, True)
    z.ffn_norm2 = nn.LayerNorm(16)
    assert tf.fused_forwards(nn.ModuleList([own, affine, z])) == {}


# -- tiny random transformers -------------------------------------------------------------------
def tiny_z_image() -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    model = ZImageTransformer2DModel(
        in_channels=4,
        dim=64,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=24,
        axes_dims=[8, 12, 12],
        axes_lens=[64, 32, 32],
    ).eval()
    _randomize(model)
    g = torch.Generator().manual_seed(1)
    inputs = {
        "x": [torch.randn(4, 1, 8, 8, generator=g) for _ in range(2)],
        "t": torch.tensor([0.3, 0.7]),
        "cap_feats": [torch.randn(n, 24, generator=g) for n in (5, 11)],  # prompts of different lengths
        "return_dict": False,
    }
    return model, inputs


def tiny_flux2() -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    model = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=8,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=24,
        timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=False,
    ).eval()
    _randomize(model)
    g = torch.Generator().manual_seed(1)
    img_ids = torch.cartesian_prod(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), torch.zeros(1))
    txt_ids = torch.cartesian_prod(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.arange(6.0))
    inputs = {
        "hidden_states": torch.randn(2, 16, 8, generator=g),
        "encoder_hidden_states": torch.randn(2, 6, 24, generator=g),
        "timestep": torch.tensor([0.3, 0.7]),
        "img_ids": img_ids,
        "txt_ids": txt_ids,
        "return_dict": False,
    }
    return model, inputs


def _randomize(model: nn.Module) -> None:
    """Norm weights away from 1 and modulation projections away from zero, so every fused term matters."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim == 1 else 0.15) + (1.0 if p.ndim == 1 else 0.0))


def run(model: nn.Module, inputs: dict, dtype: torch.dtype) -> torch.Tensor:
    cast = {
        k: ([t.to(dtype) for t in v] if isinstance(v, list) else v.to(dtype) if k not in ("img_ids", "txt_ids") else v)
        for k, v in inputs.items()
        if k != "return_dict"
    }
    with torch.no_grad():
        out = model.to(dtype)(**cast, return_dict=False)[0]
    return torch.stack(out) if isinstance(out, list) else out


MODELS = {"z-image": tiny_z_image, "flux2": tiny_flux2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_patched_tiny_transformer_is_bit_identical_on_cpu(name, dtype):
    model, inputs = MODELS[name]()
    want = run(model, inputs, dtype)
    fused = copy.deepcopy(model)
    counts = tf.fused_forwards(fused)
    assert sum(counts.values()) == 4  # z-image: 2 layers + 2 refiners; flux2: 2 double + 2 single blocks
    assert torch.equal(run(fused, inputs, dtype), want)


@pytest.fixture
def kernel_on_cpu(shim_launch, monkeypatch):
    """kernels.modulated_norm / gated_residual through the host shim: adanorm.cu itself on CPU tensors."""

    def modulated_norm(x, norm, weight=None, eps=1e-6, scale=None, shift=None, **_):
        return launchers.adanorm(x, None, None, False, None, 0.0, False, norm, weight, eps, scale, shift, shim_launch)[
            1
        ]

    def gated_residual(
        x,
        y,
        gate=None,
        *,
        y_norm=False,
        y_weight=None,
        y_eps=1e-5,
        clip=False,
        norm=None,
        weight=None,
        eps=1e-6,
        scale=None,
        shift=None,
        **_,
    ):
        return launchers.adanorm(
            x, y, gate, y_norm, y_weight, y_eps, clip, norm, weight, eps, scale, shift, shim_launch
        )

    monkeypatch.setattr(kernels, "modulated_norm", modulated_norm)
    monkeypatch.setattr(kernels, "gated_residual", gated_residual)
    return shim_launch


@pytest.fixture(scope="session")
def shim_launch():
    if shim.gxx() is None:
        pytest.skip("g++ not found: the host-shim tests compile kernels/*.cu with g++")
    return shim.ShimLaunch()


# The whole tiny transformer, kernel against torch: float32 within 1e-5 of the output's scale;
# bfloat16 within 2 bfloat16 units of it (a flipped rounding in one block carries through the rest).
# Measured here: float32 2e-5 / 29 (z-image), 6e-7 / 2.4 (flux2); bfloat16 bit for bit (both).
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2 * 2.0**-8}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_patched_tiny_transformer_with_the_kernel_stays_close(kernel_on_cpu, name, dtype):
    model, inputs = MODELS[name]()
    want = run(model, inputs, dtype)
    fused = copy.deepcopy(model)
    tf.fused_forwards(fused)
    calls = len(kernel_on_cpu.calls)
    got = run(fused, inputs, dtype)
    assert len(kernel_on_cpu.calls) > calls  # the kernel ran
    scale = float(want.float().abs().max())
    err = float((got.float() - want.float()).abs().max())
    assert err <= TOLERANCE[dtype] * scale, f"{name} {dtype}: max diff {err:.3g} at output scale {scale:.3g}"


def test_registry_applies_it_to_the_pipelines_transformer():
    model, _ = tiny_flux2()
    pipe = type("Pipe", (), {"transformer": model})()
    registry.transformer_fused_norms(pipe)
    assert all(
        "forward" in vars(m) for m in model.modules() if type(m) in (Flux2TransformerBlock, Flux2SingleTransformerBlock)
    )
