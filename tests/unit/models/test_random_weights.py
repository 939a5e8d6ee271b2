"""--weights random: the bundled configs give the published architectures (counted on meta)."""

import pytest
import torch

from turbobatch.errors import JobError
from turbobatch.models.random_weights import build_components
from turbobatch.models.resolve import resolve_model
from turbobatch.spec.job import JobSpec
from turbobatch.spec.resolved import ResolvedJob


def params(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def test_sd_turbo_has_the_published_sizes():
    parts = build_components("stabilityai/sd-turbo", device="meta")
    assert round(params(parts["unet"]), 1) == 865.9
    assert parts["unet"].config.attention_head_dim == [5, 10, 20, 20]
    assert parts["unet"].config.cross_attention_dim == 1024 and parts["unet"].config.use_linear_projection
    te = parts["text_encoder"].config
    assert (te.hidden_size, te.num_hidden_layers) == (1024, 23)
    assert parts["vae"].config.scaling_factor == 0.18215


def test_sdxl_turbo_has_the_published_sizes():
    parts = build_components("stabilityai/sdxl-turbo", device="meta")
    assert round(params(parts["unet"]) / 1000, 3) == 2.567
    assert round(params(parts["text_encoder"])) == 123 and round(params(parts["text_encoder_2"])) == 695
    assert parts["vae"].config.scaling_factor == 0.13025


def test_random_models_resolve_without_the_hub():
    info = resolve_model("stabilityai/sdxl-turbo", "random")
    assert (info.pipeline_class, info.native_height, info.native_width) == ("StableDiffusionXLPipeline", 512, 512)
    assert resolve_model("stabilityai/sd-turbo", "random").native_height == 512
    with pytest.raises(JobError, match="--weights random: no bundled config for 'tiny-sd-turbo'"):
        resolve_model("tiny-sd-turbo", "random")
    with pytest.raises(JobError, match="drop --controlnet and --vae"):
        JobSpec(input="i", output="o", weights="random", vae="x").validate()


@pytest.mark.slow
def test_a_random_weight_sd_turbo_renders_through_the_worker(tmp_path):
    """The full-size path end to end, small image: real architecture, meaningless pixels."""
    from tests.conftest import write_parquet
    from tests.helpers import read_metadata
    from turbobatch.output.shard import Shard
    from turbobatch.workers.actor import RenderWorker

    data = write_parquet(tmp_path / "p.parquet", {"prompt": ["a lighthouse"]})
    spec = ResolvedJob(
        input=str(data),
        output=str(tmp_path / "out"),
        model="stabilityai/sd-turbo",
        weights="random",
        device="cpu",
        dtype="float32",
        height=64,
        width=64,
        shard_size=1,
    )
    RenderWorker(spec).render_shard(Shard(0, f"file://{data}", 0, 1, 0, 9))
    [row] = read_metadata(tmp_path / "out")
    assert (row["status"], row["width"], row["height"]) == ("ok", 64, 64)


def test_tiny_autoencoder_has_the_published_taesd_architecture():
    """madebyollin/taesd: 64 channels everywhere, 1+3+3+3 encoder / 3+3+3+1 decoder blocks, 8x;
    its parameter count (about 2.45M) is the published checkpoint's."""
    from turbobatch.models.random_weights import tiny_autoencoder

    with torch.device("meta"):
        vae = tiny_autoencoder()
    assert list(vae.config.num_decoder_blocks) == [3, 3, 3, 1] and vae.config.latent_channels == 4
    assert 2.4e6 < sum(p.numel() for p in vae.parameters()) < 2.5e6
    with pytest.raises(ValueError, match="power of two"):
        tiny_autoencoder(4, 6)


def test_z_image_turbo_has_the_published_sizes():
    """Z-Image-Turbo: a 6.15B DiT (the card's figure), Qwen3-4B (4.02B: Qwen's card says 4.0B), and
    FLUX.1's 84M-parameter VAE; 10.25B parameters, 20.5 GB in bf16 (the issue's ~19 GB is GiB)."""
    parts = build_components("Tongyi-MAI/Z-Image-Turbo", device="meta", dtype=torch.bfloat16)
    assert round(params(parts["transformer"]) / 1000, 2) == 6.15
    assert round(params(parts["text_encoder"]) / 1000, 2) == 4.02
    assert type(parts["text_encoder"]).__name__ == "Qwen3Model"
    assert round(params(parts["vae"])) == 84 and parts["vae"].config.latent_channels == 16
    assert all(p.dtype == torch.bfloat16 for m in parts.values() for p in m.parameters())


def test_flux2_klein_4b_has_the_published_sizes():
    """klein 4B: a 3.9B DiT (the "4B"), the same Qwen3-4B (as a causal LM: tied head, no extra
    parameters), AutoencoderKLFlux2 with 32 latent channels."""
    parts = build_components("black-forest-labs/FLUX.2-klein-4B", device="meta")
    assert round(params(parts["transformer"]) / 1000, 2) == 3.88
    assert round(params(parts["text_encoder"]) / 1000, 2) == 4.02
    assert type(parts["text_encoder"]).__name__ == "Qwen3ForCausalLM"
    assert parts["vae"].config.latent_channels == 32
    assert parts["transformer"].config.joint_attention_dim == 3 * parts["text_encoder"].config.hidden_size


def test_bundled_schedulers_are_the_tiny_twins():
    """The tiny twins and --weights random sample the same schedule (one is not edited alone)."""
    from turbobatch.models.random_weights import config
    from turbobatch.models.tiny_dit import FLUX2_SCHEDULER, Z_IMAGE_SCHEDULER

    for model, expected in (
        ("Tongyi-MAI/Z-Image-Turbo", Z_IMAGE_SCHEDULER),
        ("black-forest-labs/FLUX.2-klein-4B", FLUX2_SCHEDULER),
    ):
        assert {k: v for k, v in config(model, "scheduler").items() if not k.startswith("_")} == expected


def test_random_dit_models_resolve_without_the_hub():
    z = resolve_model("Tongyi-MAI/Z-Image-Turbo", "random")
    assert (z.pipeline_class, z.family, z.native_height, z.cross_attention_dim) == (
        "ZImagePipeline",
        "z-image",
        1024,
        2560,
    )
    assert (z.latent_channels, z.size_multiple) == (16, 16)
    k = resolve_model("black-forest-labs/FLUX.2-klein-4B", "random")
    assert (k.pipeline_class, k.family, k.distilled, k.native_width) == (
        "Flux2KleinPipeline",
        "flux2-klein",
        True,
        1024,
    )
    assert (k.cross_attention_dim, k.latent_channels) == (7680, 32)


@pytest.mark.parametrize(
    "model, cls",
    [("Tongyi-MAI/Z-Image-Turbo", "ZImagePipeline"), ("black-forest-labs/FLUX.2-klein-4B", "Flux2KleinPipeline")],
)
def test_random_dit_pipelines_assemble_on_meta(model, cls):
    """What load_pipeline builds for --weights random, on meta (on a GPU: the same, in bf16)."""
    from turbobatch.models.random_weights import build_random_pipeline

    pipe = build_random_pipeline(model, "meta", torch.bfloat16)
    assert type(pipe).__name__ == cls and pipe.transformer.dtype == torch.bfloat16
    assert pipe.scheduler.config.shift == 3.0
    assert getattr(pipe.config, "is_distilled", False) is (cls == "Flux2KleinPipeline")
    assert pipe.tokenizer.apply_chat_template([{"role": "user", "content": "a"}], tokenize=False).startswith(
        "<|im_start|>"
    )
