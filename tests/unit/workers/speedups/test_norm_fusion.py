"""workers/speedups/norm_fusion.py on CPU, where kernels.group_norm is its torch reference: a fused block,
decoder or UNet computes bit for bit what the stock one does, and only what is proven equal is fused."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch
from diffusers import AutoPipelineForText2Image, UNet2DConditionModel
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from tests.conftest import REPO
from turbobatch.models.tiny import tiny_model_path
from turbobatch.workers.speedups import norm_fusion as nf


class _OwnForward(ResnetBlock2D):
    def forward(self, input_tensor, temb, *args, **kwargs):
        return super().forward(input_tensor, temb) * 2


@pytest.mark.parametrize(
    "make",
    [
        lambda: ResnetBlock2D(in_channels=8, groups=4, temb_channels=8, time_embedding_norm="scale_shift"),
        lambda: ResnetBlock2D(in_channels=8, groups=4, temb_channels=None, up=True),
        lambda: ResnetBlock2D(in_channels=8, groups=4, temb_channels=None, down=True),
        lambda: ResnetBlock2D(in_channels=8, groups=4, temb_channels=None, non_linearity="mish"),
        lambda: _OwnForward(in_channels=8, groups=4, temb_channels=8),
    ],
)
def test_other_resnets_are_left_alone(make):
    block = make()
    before = repr(block)
    assert nf.fuse_group_norms(SimpleNamespace(decoder=nn.ModuleList([block]))) == 0
    assert repr(block) == before


def test_plain_resnet_is_bit_identical():
    torch.manual_seed(0)
    block = ResnetBlock2D(in_channels=8, out_channels=16, groups=4, temb_channels=None).eval()
    x = torch.randn(2, 8, 5, 7)
    want = block(x, None)
    assert nf.fuse_group_norms(SimpleNamespace(decoder=nn.ModuleList([block]))) == 2
    assert isinstance(block.nonlinearity, nn.Identity) and block.norm1.silu and block.norm2.silu
    assert torch.equal(block(x, None), want)
    assert set(block.state_dict()) >= {"norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"}


@pytest.mark.parametrize("skip_time_act", [False, True])
def test_resnet_with_time_embedding_is_bit_identical(skip_time_act):
    """The UNet's resnets: their SiLU also acts on the time embedding (unless skip_time_act), so
    it moves into time_emb_proj; the Parameters and their state_dict keys stay."""
    torch.manual_seed(1)
    block = ResnetBlock2D(
        in_channels=8, out_channels=16, groups=4, temb_channels=12, skip_time_act=skip_time_act
    ).eval()
    x, temb = torch.randn(2, 8, 5, 7), torch.randn(2, 12)
    want, keys = block(x, temb), set(block.state_dict())
    assert nf.fuse_group_norms(SimpleNamespace(decoder=nn.ModuleList([block]))) == 2
    assert isinstance(block.time_emb_proj, nn.Linear if skip_time_act else nf.SiLULinear)
    assert torch.equal(block(x, temb), want)
    assert set(block.state_dict()) == keys


def test_fused_group_norm_on_attention_views():
    """The attention processor normalises ``x.view(B, C, HW).transpose(1, 2).transpose(1, 2)``:
    contiguous for NCHW input, channel stride 1 for channels_last input."""
    torch.manual_seed(0)
    norm = nn.GroupNorm(4, 16, eps=1e-6)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    fused = nf.FusedGroupNorm(norm, silu=False)
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 16, 5, 7).contiguous(memory_format=fmt)
        seq = x.view(2, 16, 35).transpose(1, 2)
        assert torch.equal(fused(seq.transpose(1, 2)), norm(seq.transpose(1, 2)))


# -- UNets ------------------------------------------------------------------------------------
def group_norms(module: nn.Module) -> int:
    return sum(type(m) is nn.GroupNorm for m in module.modules())


@pytest.mark.parametrize("model", ["sd-turbo", "sdxl-turbo"])
def test_every_group_norm_of_the_real_unets_is_fused(model):
    """The real UNet architectures (models/configs, on the meta device: no weights). sd-turbo:
    22 resnets x 2 + 16 transformers + conv_norm_out = 61; sdxl-turbo: 17 x 2 + 11 + 1 = 46."""
    config = json.loads((REPO / "turbobatch" / "models" / "configs" / model / "unet.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    assert group_norms(unet) == {"sd-turbo": 61, "sdxl-turbo": 46}[model]
    assert nf.fuse_unet_group_norms(unet) == {"sd-turbo": 61, "sdxl-turbo": 46}[model]
    assert group_norms(unet) == 0
    assert nf.fuse_unet_group_norms(unet) == 0  # a second application: nothing


def test_only_unets_are_fused():
    vae_like = nn.Sequential(nn.GroupNorm(2, 4), nn.SiLU())
    assert nf.fuse_unet_group_norms(vae_like) == 0
    assert type(vae_like[0]) is nn.GroupNorm


@pytest.mark.parametrize("model", ["tiny-sd-turbo", "tiny-sdxl-turbo"])
def test_fused_unet_gives_the_same_latents(model, tiny_model_dir):
    pipe = AutoPipelineForText2Image.from_pretrained(tiny_model_path(model))
    pipe.set_progress_bar_config(disable=True)

    def latents(p) -> torch.Tensor:
        return p(
            ["a red fox", "a lighthouse"],
            num_inference_steps=2,
            guidance_scale=0.0,
            height=64,
            width=64,
            output_type="latent",
            generator=[torch.Generator().manual_seed(s) for s in (1, 2)],
        ).images

    want = latents(pipe)
    fused = copy.deepcopy(pipe)
    norms = group_norms(fused.unet)
    assert norms > 0 and nf.fuse_unet_group_norms(fused.unet) == norms
    assert group_norms(fused.unet) == 0
    assert torch.equal(latents(fused), want)
