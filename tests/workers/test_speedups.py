"""workers/speedups.py on real tiny pipelines (CPU): each change is applied, and images stay put."""

import numpy as np
import pytest
import torch

from jobs.spec import JobSpec
from workers import speedups
from workers.actor import RenderWorker
from workers.renderer import Rendered
from workers.rows import Row

PROMPTS = ["a red fox", "a lighthouse at dusk, oil painting", ""]
MAX_LEVELS = 3  # largest allowed uint8 difference from the unchanged worker (numeric noise only)


def make_worker(out, model: str) -> RenderWorker:
    return RenderWorker(JobSpec(input="unused", output=str(out), model=model, device="cpu", dtype="float32",
                                height=64, width=64))  # fmt: skip


def render(worker: RenderWorker) -> list[np.ndarray]:
    rows = [Row(i, f"{i:03d}", p, None, 1000 + i) for i, p in enumerate(PROMPTS)]
    results = list(worker.renderer.render(rows))
    assert all(isinstance(r, Rendered) for r in results), [getattr(r, "error", None) for r in results]
    return [r.image for r in results]


@pytest.fixture(scope="module", params=["tiny-sd-turbo", "tiny-sdxl-turbo"])
def model(request, tiny_model_dir):
    return request.param


@pytest.fixture(scope="module")
def baseline(model, tmp_path_factory):
    images = render(make_worker(tmp_path_factory.mktemp("base"), model))
    assert all(img.std() > 1 for img in images)  # not flat: a comparison with them means something
    return images


def attn_processors(pipe) -> set[str]:
    return {type(p).__name__ for part in (pipe.unet, pipe.vae) for p in part.attn_processors.values()}


def check_channels_last(pipe) -> None:
    convs = [m for part in (pipe.unet, pipe.vae) for m in part.modules()
             if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]  # fmt: skip
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not any(c.weight.is_contiguous() for c in convs)


def check_fuse_qkv(pipe) -> None:
    from diffusers.models.attention_processor import Attention

    assert attn_processors(pipe) == {"FusedAttnProcessor2_0"}
    attns = [m for part in (pipe.unet, pipe.vae) for m in part.modules() if isinstance(m, Attention)]
    assert attns and all(hasattr(a, "to_kv" if a.is_cross_attention else "to_qkv") for a in attns)


def check_sdpa(pipe) -> None:
    assert attn_processors(pipe) == {"AttnProcessor2_0"}


CHECKS = {"channels_last": check_channels_last, "fuse_qkv": check_fuse_qkv, "sdpa": check_sdpa}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_speedup_applies_and_images_stay_within_noise(name, model, baseline, tmp_path):
    worker = make_worker(tmp_path, model)
    speedups.apply(worker.renderer.pipe, name)
    CHECKS[name](worker.renderer.pipe)  # the change really happened
    images = render(worker)
    assert len(images) == len(baseline)
    for got, want in zip(images, baseline):
        assert got.shape == want.shape
        diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
        assert diff.max() <= MAX_LEVELS, f"{name}: max abs diff {diff.max()} levels"
        assert diff.mean() < 0.05, f"{name}: mean abs diff {diff.mean():.4f} levels"


def test_compile_unet_marks_the_unet_for_compilation_without_changing_its_class(tiny_model_dir, tmp_path):
    pipe = make_worker(tmp_path, "tiny-sd-turbo").renderer.pipe
    cls = type(pipe.unet)
    speedups.compile_unet(pipe, mode="reduce-overhead")
    assert type(pipe.unet) is cls and pipe.unet._compiled_call_impl is not None  # compiled lazily, on first call


def test_compile_option_compiles_each_workers_unet(tiny_model_dir, tmp_path):
    """--compile MODE: the worker marks its UNet for torch.compile (compiled lazily, on the first
    call); off by default."""
    spec = JobSpec(input="unused", output=str(tmp_path), model="tiny-sd-turbo", device="cpu", dtype="float32",
                   height=64, width=64, compile="max-autotune")  # fmt: skip
    assert RenderWorker(spec).renderer.pipe.unet._compiled_call_impl is not None
    assert make_worker(tmp_path, "tiny-sd-turbo").renderer.pipe.unet._compiled_call_impl is None


def test_cuda_graphs_is_compile_unet_in_reduce_overhead_mode(tiny_model_dir, tmp_path):
    pipe = make_worker(tmp_path, "tiny-sd-turbo").renderer.pipe
    speedups.cuda_graphs(pipe)
    assert pipe.unet._compiled_call_impl is not None
    assert speedups.COMPILING == {"compile_unet", "cuda_graphs"}


def test_tiny_vae_decodes_with_a_taesd_architecture(model, baseline, tmp_path):
    """Different images by design (another decoder, random weights), but the same shapes, not
    flat, and the renderer's decode path (unscale, post-process, stats) runs unchanged."""
    from diffusers import AutoencoderTiny

    worker = make_worker(tmp_path, model)
    speedups.tiny_vae(worker.renderer.pipe)
    vae = worker.renderer.pipe.vae
    assert isinstance(vae, AutoencoderTiny) and worker.renderer.pipe.config.vae[1] == "AutoencoderTiny"
    assert list(vae.config.decoder_block_out_channels) == [64, 64]  # the tiny models upscale 2x: 2 blocks
    images = render(worker)
    assert [i.shape for i in images] == [b.shape for b in baseline]
    assert all(img.std() > 1 for img in images)
    assert not any(np.array_equal(a, b) for a, b in zip(images, baseline))


def test_registry_and_unknown_name():
    assert set(speedups.SPEEDUPS) == {"channels_last", "fuse_qkv", "sdpa", "compile_unet", "cuda_graphs", "tiny_vae"}
    assert speedups.CHANGES_PIXELS == {"tiny_vae"}
    assert speedups.get("sdpa") is speedups.sdpa
    with pytest.raises(ValueError, match="'taesd'.*channels_last, fuse_qkv, sdpa, compile_unet, cuda_graphs, tiny_vae"):
        speedups.get("taesd")
    with pytest.raises(ValueError, match="unknown speedup"):
        speedups.apply(object(), "cuda_graph")


def test_fuse_qkv_needs_a_pipeline_that_has_it():
    with pytest.raises(ValueError, match="no fuse_qkv_projections"):
        speedups.fuse_qkv(object())
