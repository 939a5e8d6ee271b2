"""The renderer on CUDA (skipped without it; run by make gpu-check): a batch is queued from prompt
to uint8 image without one host synchronisation, two batches are in flight at once, and the
images stay within 1 level of a plain diffusers call."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_within_one_level
from tests.unit.workers.test_control import plain_pipeline
from turbobatch.spec.resolved import ResolvedJob
from turbobatch.workers.batches import PipelineRenderer, Rendered
from turbobatch.workers.rows import Row
from turbobatch.workers.speedups import registry as speedups

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

PROMPTS = [f"a photo of object {i}, studio light" for i in range(6)]


def gpu_renderer(model: str, changes: str, **kw) -> PipelineRenderer:
    spec = ResolvedJob(
        input="unused",
        output="unused",
        model=model,
        device="cuda",
        dtype="float16",
        height=64,
        width=64,
        batch_size=4,
        speedups=changes,
        **kw,
    )
    pipe = plain_pipeline(model).to("cuda", torch.float16)
    speedups.apply(pipe, spec.speedup_set)
    return PipelineRenderer(pipe, spec, "cuda", overlap="overlap" in spec.speedup_set)


def rows(n: int = len(PROMPTS)) -> list[Row]:
    return [Row(i, f"{i:03d}", PROMPTS[i], None, 100 + i) for i in range(n)]


@pytest.mark.parametrize("model", ["tiny-sd-turbo", "tiny-sdxl-turbo"])
@pytest.mark.parametrize("changes", ["none", "default", "fold_upsample,fused_norms,unet_fused_norms,channels_last"])
def test_a_batch_is_queued_without_a_host_sync(model, changes):
    renderer = gpu_renderer(model, changes, steps=2)
    renderer._finish(renderer._queue(rows(4)))  # warm-up: cuDNN/cuBLAS handles, allocator, kernel modules
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising CUDA call raises
    try:
        queued = renderer._queue(rows(4))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    results = renderer._finish(queued)
    assert [r.row.key for r in results] == ["000", "001", "002", "003"]


def test_the_next_batch_is_queued_before_the_current_one_is_finished(monkeypatch):
    renderer = gpu_renderer("tiny-sd-turbo", "overlap")
    events: list[str] = []
    queue, finish = renderer._queue, renderer._finish
    monkeypatch.setattr(renderer, "_queue", lambda batch: events.append(f"queue {batch[0].key}") or queue(batch))
    monkeypatch.setattr(renderer, "_finish", lambda q: events.append(f"finish {q.rows[0].key}") or finish(q))
    results = list(renderer.render(rows()))
    assert all(isinstance(r, Rendered) for r in results) and len(results) == len(PROMPTS)
    assert events == ["queue 000", "queue 004", "finish 000", "finish 004"]


@pytest.mark.parametrize("model", ["tiny-sd-turbo", "tiny-sdxl-turbo"])
def test_images_within_one_level_of_plain_diffusers_on_cuda(model):
    renderer = gpu_renderer(model, "default")
    plain = plain_pipeline(model).to("cuda", torch.float16)
    for r in renderer.render(rows()):
        expected = plain(
            r.row.prompt,
            num_inference_steps=1,
            guidance_scale=0.0,
            height=64,
            width=64,
            generator=torch.Generator("cuda").manual_seed(r.row.seed),
            output_type="np",
        ).images[0]
        assert_within_one_level(r.image, (expected * 255).round().astype("uint8"), r.row.key)
