"""workers/speedups/registry.py on real tiny pipelines (CPU): each change is applied, and images stay within 1 level."""

import numpy as np
import pytest
import torch

from turbobatch.spec.job import DEFAULT_SPEEDUPS, SPEEDUPS
from turbobatch.spec.resolved import ResolvedJob
from turbobatch.workers.actor import RenderWorker
from turbobatch.workers.batches import Rendered
from turbobatch.workers.rows import Row
from turbobatch.workers.speedups import registry as speedups

PROMPTS = ["a red fox", "a lighthouse at dusk, oil painting", ""]


def make_worker(out, model: str) -> RenderWorker:
    """No speed change: the baseline the changes are compared with."""
    return worker_with(out, model, "none")


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


def worker_with(out, model: str, changes: str) -> RenderWorker:
    return RenderWorker(
        ResolvedJob(
            input="unused",
            output=str(out),
            model=model,
            device="cpu",
            dtype="float32",
            height=64,
            width=64,
            speedups=changes,
        )
    )


def check_fold_upsample(pipe) -> None:
    from turbobatch.workers.speedups.decoder_ops import FoldedUpsampleConv

    assert any(isinstance(m, FoldedUpsampleConv) for m in pipe.vae.modules())


def check_fused_norms(pipe) -> None:
    from turbobatch.workers.speedups.norm_fusion import FusedGroupNorm

    assert any(isinstance(m, FusedGroupNorm) for m in pipe.vae.decoder.modules())
    assert not any(type(m) is torch.nn.GroupNorm for m in pipe.vae.decoder.modules())
    assert any(type(m) is torch.nn.GroupNorm for m in pipe.unet.modules())  # the UNet's are unet_fused_norms'


def check_unet_fused_norms(pipe) -> None:
    from turbobatch.workers.speedups.norm_fusion import FusedGroupNorm

    assert any(isinstance(m, FusedGroupNorm) for m in pipe.unet.modules())
    assert not any(type(m) is torch.nn.GroupNorm for m in pipe.unet.modules())
    assert any(type(m) is torch.nn.GroupNorm for m in pipe.vae.decoder.modules())


def check_transformer_fused_norms(pipe) -> None:
    """The SD pipelines have no transformer: nothing changes (tests/unit/workers/speedups/
    test_transformer_fusion.py covers the Z-Image and FLUX.2 blocks)."""
    assert getattr(pipe, "transformer", None) is None
    assert not any("forward" in vars(m) for m in pipe.unet.modules())


def check_channels_last(pipe) -> None:
    convs = [m for m in pipe.vae.decoder.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)


def check_cudnn_benchmark(pipe) -> None:
    assert torch.backends.cudnn.benchmark


def check_compile_decoder(pipe) -> None:
    assert pipe.vae.decoder._compiled_call_impl is not None  # compiled lazily, on the first call


def check_overlap(pipe) -> None:
    """The renderer's; checked by worker_in_flight below."""


CHECKS = {
    "overlap": check_overlap,
    "fold_upsample": check_fold_upsample,
    "fused_norms": check_fused_norms,
    "unet_fused_norms": check_unet_fused_norms,
    "transformer_fused_norms": check_transformer_fused_norms,
    "channels_last": check_channels_last,
    "cudnn_benchmark": check_cudnn_benchmark,
    "compile_decoder": check_compile_decoder,
}


def test_the_registry_is_the_specs_list():
    assert tuple(speedups.PIPELINE_CHANGES) == SPEEDUPS == tuple(CHECKS)
    assert set(DEFAULT_SPEEDUPS) <= set(SPEEDUPS) and speedups.COMPILING <= set(SPEEDUPS)


@pytest.mark.parametrize("name", [n for n in SPEEDUPS if n not in speedups.COMPILING])
def test_speedup_applies_and_images_stay_within_one_level(name, model, baseline, tmp_path):
    previous = torch.backends.cudnn.benchmark
    try:
        worker = worker_with(tmp_path, model, name)
        CHECKS[name](worker.renderer.pipe)  # the change really happened
        images = render(worker)
    finally:
        torch.backends.cudnn.benchmark = previous
    assert len(images) == len(baseline)
    for got, want in zip(images, baseline):
        assert got.shape == want.shape
        diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
        assert diff.max() <= 1, f"{name}: max abs diff {diff.max()} levels"


def test_overlap_keeps_two_batches_in_flight(tmp_path, tiny_model_dir):
    assert worker_with(tmp_path, "tiny-sd-turbo", "overlap").renderer.in_flight == 2
    assert worker_with(tmp_path, "tiny-sd-turbo", "none").renderer.in_flight == 1


def test_compile_decoder_marks_the_decoder_and_pads_batches(tmp_path, tiny_model_dir):
    worker = worker_with(tmp_path, "tiny-sd-turbo", "compile_decoder")
    check_compile_decoder(worker.renderer.pipe)
    assert worker.renderer.pad_batches  # a short batch would compile again
    assert not worker_with(tmp_path, "tiny-sd-turbo", "default").renderer.pad_batches


def test_unknown_names_are_errors():
    with pytest.raises(ValueError, match="unknown speedup.*'taesd'"):
        speedups.apply(object(), ["taesd"])


def test_compile_unet_marks_the_unet_for_compilation_without_changing_its_class(tiny_model_dir, tmp_path):
    pipe = make_worker(tmp_path, "tiny-sd-turbo").renderer.pipe
    cls = type(pipe.unet)
    speedups.compile_unet(pipe, mode="reduce-overhead")
    assert type(pipe.unet) is cls and pipe.unet._compiled_call_impl is not None  # compiled lazily, on first call


def test_compile_option_compiles_each_workers_unet(tiny_model_dir, tmp_path):
    """--compile MODE: the worker marks its UNet for torch.compile (compiled lazily, on the first
    call); off by default."""
    spec = ResolvedJob(
        input="unused",
        output=str(tmp_path),
        model="tiny-sd-turbo",
        device="cpu",
        dtype="float32",
        height=64,
        width=64,
        compile="max-autotune",
    )
    assert RenderWorker(spec).renderer.pipe.unet._compiled_call_impl is not None
    assert make_worker(tmp_path, "tiny-sd-turbo").renderer.pipe.unet._compiled_call_impl is None


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
