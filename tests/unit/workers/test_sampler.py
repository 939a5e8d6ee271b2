"""workers/sampler.py against the diffusers pipelines it replaces, on the tiny twins (CPU).

For every family (SD, SDXL, both with a ControlNet, the tiny autoencoder) and 1-4 steps, with and
without guidance, the sampler's latents for a batch equal the pipeline's ``output_type="latent"``
latents for the same batch bit for bit, and the renderer's images are within 1 level of the
pipeline's own images.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import assert_within_one_level
from tests.unit.workers.test_control import plain_pipeline
from turbobatch.spec.resolved import ResolvedJob
from turbobatch.spec.sampling import SamplingParams
from turbobatch.workers.batches import PipelineRenderer, Rendered
from turbobatch.workers.rows import Row
from turbobatch.workers.sampler import TurboSampler
from turbobatch.workers.speedups import registry as speedups

SIZE = (48, 40)  # height, width: not square, not the native size
PROMPTS = ["a red fox in the snow", "a lighthouse at dusk, oil painting " * 12, ""]  # the 2nd is truncated
SEEDS = [7, 2**40 + 3, 0]

FAMILIES = {
    "sd": ("tiny-sd-turbo", None, None),
    "sdxl": ("tiny-sdxl-turbo", None, None),
    "sd-controlnet": ("tiny-sd-turbo", "tiny-sd-controlnet", None),
    "sdxl-controlnet": ("tiny-sdxl-turbo", "tiny-sdxl-controlnet", None),
    "sd-taesd": ("tiny-sd-turbo", None, "tiny-taesd"),
}


def spec(model: str, steps: int, guidance: float, controlnet: str | None, **kw) -> ResolvedJob:
    return ResolvedJob(
        input="unused",
        output="unused",
        model=model,
        steps=steps,
        guidance_scale=guidance,
        height=SIZE[0],
        width=SIZE[1],
        controlnet=controlnet,
        device="cpu",
        dtype="float32",
        control_image_column="c" if controlnet else None,
        **kw,
    )


def controls(controlnet: str | None) -> list[Image.Image] | None:
    if not controlnet:
        return None
    rng = np.random.default_rng(5)
    return [Image.fromarray(rng.integers(0, 256, (SIZE[0], SIZE[1], 3), dtype=np.uint8)) for _ in PROMPTS]


def pipeline_call(pipe, steps: int, guidance: float, images, output_type: str, negatives=None, size=SIZE):
    extra = {"image": images} if images is not None else {}
    return pipe(
        prompt=PROMPTS,
        negative_prompt=negatives,
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=size[0],
        width=size[1],
        generator=[torch.Generator("cpu").manual_seed(s) for s in SEEDS],
        output_type=output_type,
        **extra,
    ).images


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tiny_model_dir):
    """(model, ControlNet, VAE, the plain pipeline of that combination)."""
    model, controlnet, vae = FAMILIES[request.param]
    return model, controlnet, vae, plain_pipeline(model, controlnet, tiny_vae=vae)


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
@pytest.mark.parametrize("guidance", [0.0, 2.5])
def test_latents_equal_the_pipelines_bit_for_bit(family, steps, guidance):
    model, controlnet, vae, pipe = family
    images = controls(controlnet)
    expected = pipeline_call(pipe, steps, guidance, images, "latent")
    latents, truncated = TurboSampler(pipe, spec(model, steps, guidance, controlnet), "cpu").sample(
        PROMPTS, None, SEEDS, images
    )
    assert torch.equal(latents, expected)
    assert truncated == [False, True, False]


@pytest.mark.parametrize("steps", [1, 4])
def test_images_are_within_one_level_of_the_pipelines(family, steps):
    """The renderer's uint8 images (its decode, the default speedups, post-process) against the
    pipeline's own images, with the rows split over batches of 2 and 1."""
    model, controlnet, vae, pipe = family
    images = controls(controlnet)
    expected = pipeline_call(pipe, steps, 0.0, images, "np")
    job = spec(model, steps, 0.0, controlnet, batch_size=2)
    fast = plain_pipeline(model, controlnet, tiny_vae=vae)  # its own copy: the speedups change it
    speedups.apply(fast, job.speedup_set)
    renderer = PipelineRenderer(fast, job, "cpu")
    rows = [
        Row(i, str(i), p, None, s, control_image=images[i] if images else None)
        for i, (p, s) in enumerate(zip(PROMPTS, SEEDS))
    ]
    results = list(renderer.render(rows))
    assert all(isinstance(r, Rendered) for r in results)
    assert [r.batch_size for r in results] == [2, 2, 1]
    for r, want in zip(results, expected):
        assert_within_one_level(r.image, (want * 255).round().astype(np.uint8), r.row.key)
    assert any(r.image.std() > 1 for r in results)  # images with content: the comparison means something


def test_one_sampler_samples_each_batch_with_its_own_parameters(family, monkeypatch):
    """Sweeps and per-row columns: batches of one worker differ in steps, guidance and size. Each
    batch's latents equal the pipeline's for its parameters bit for bit, in any order; the
    scheduler is prepared once per step count (SDXL's size ids once per size), not per batch."""
    model, controlnet, vae, pipe = family
    images = controls(controlnet)  # the pipelines resize control images to the render size, as we do
    sampler = TurboSampler(pipe, spec(model, 1, 0.0, controlnet), "cpu")
    batches = [
        SamplingParams(2, 0.0, 32, 24),
        SamplingParams(1, 2.5, *SIZE),
        SamplingParams(3, 0.0, 56, 48),
        SamplingParams(2, 0.0, 32, 24),
        SamplingParams(1, 0.0, *SIZE),
    ]
    prepared = []
    real = type(pipe.scheduler).set_timesteps
    monkeypatch.setattr(
        type(pipe.scheduler), "set_timesteps", lambda self, n, **kw: prepared.append(n) or real(self, n, **kw)
    )
    # The job's step count (1) was prepared with the sampler; 2 and 3 on their first batch only.
    for p, prepares in zip(batches, [[2], [], [3], [], []]):
        expected = pipeline_call(pipe, p.steps, p.guidance_scale, images, "latent", size=(p.height, p.width))
        prepared.clear()  # the pipeline's own call prepares its scheduler; count only the sampler's
        latents, _ = sampler.sample(PROMPTS, None, SEEDS, images, p)
        assert torch.equal(latents, expected), p
        assert latents.shape[2:] == (p.height // 2, p.width // 2)
        assert prepared == prepares, p
    assert sorted(sampler._schedulers) == [1, 2, 3]
    if sampler.family.name == "sdxl":
        assert sorted((h, w) for h, w, _ in sampler.family.time_ids) == [(32, 24), (48, 40), (56, 48)]


def test_negative_prompts_with_guidance(family):
    model, controlnet, vae, pipe = family
    images = controls(controlnet)
    negatives = ["blurry", "", "low quality, " * 40]
    expected = pipeline_call(pipe, 2, 3.0, images, "latent", negatives=negatives)
    latents, _ = TurboSampler(pipe, spec(model, 2, 3.0, controlnet), "cpu").sample(PROMPTS, negatives, SEEDS, images)
    assert torch.equal(latents, expected)


def test_a_rows_latents_do_not_depend_on_its_batch_mates(family):
    model, controlnet, vae, pipe = family
    images = controls(controlnet)
    sampler = TurboSampler(pipe, spec(model, 2, 0.0, controlnet), "cpu")
    together, _ = sampler.sample(PROMPTS, None, SEEDS, images)
    alone, _ = sampler.sample(PROMPTS[:1], None, SEEDS[:1], images[:1] if images else None)
    assert torch.allclose(together[:1], alone, atol=1e-4)  # the same image; low bits may move with the batch
    assert not torch.allclose(together[1:2], alone, atol=1e-2)  # and another row's is another image


def test_no_step_looks_up_its_index_on_the_device(monkeypatch):
    """diffusers' Euler schedulers find a step's index with .nonzero().item() (a host sync) unless
    the begin index is set: the sampler never takes that path."""
    pipe = plain_pipeline("tiny-sd-turbo")
    sampler = TurboSampler(pipe, spec("tiny-sd-turbo", 4, 0.0, None), "cpu")

    def sync(*args, **kwargs):
        raise AssertionError("index_for_timestep called: a .nonzero().item() per step")

    monkeypatch.setattr(type(pipe.scheduler), "index_for_timestep", sync)
    latents, _ = sampler.sample(PROMPTS, None, SEEDS)
    assert latents.shape == (3, 4, SIZE[0] // 2, SIZE[1] // 2)
    assert pipe.scheduler.step_index is None  # the pipeline's own scheduler is left untouched
