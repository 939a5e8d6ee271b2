"""workers/sampler.py's flow-matching families (Z-Image, FLUX.2 klein) against their diffusers
pipelines, on the tiny twins (CPU).

A row's image is what a plain pipeline call for that one prompt and seed makes: at batch sizes 1,
3 and 8, with prompts of very different lengths in one batch (Z-Image drops each prompt's padding
and the transformer pads the batch with a mask; klein keeps all 512 positions), for 1 to 8
steps. Where diffusers' batched call differs from its single call, ours follows the single call.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tests.helpers import assert_within_one_level
from tests.unit.workers.test_control import plain_pipeline
from turbobatch.spec.job import JobSpec
from turbobatch.spec.sampling import SamplingParams
from turbobatch.workers.batches import PipelineRenderer, Rendered
from turbobatch.workers.decode import Decoder
from turbobatch.workers.rows import Row
from turbobatch.workers.sampler import TurboSampler

SIZE = (48, 40)  # height, width: multiples of 4 (the twins' VAE scale 2 x the 2x2 patch), not square
PROMPTS = [
    "a red fox in the snow",
    "a lighthouse at dusk, oil painting, " * 30,  # past 512 tokens: truncated
    "",
    "cat",
    "a very detailed photograph of an old harbour town with fishing boats, gulls and fog " * 2,
    "ink",
    "macro shot of dew on a leaf",
    "a castle",
]
SEEDS = [7, 2**40 + 3, 0, 11, 12345, 3, 99, 2**62]
FAMILIES = {"z-image": ("tiny-z-image-turbo", 0.0), "flux2-klein": ("tiny-flux2-klein", 1.0)}


def spec(model: str, steps: int, guidance: float, **kw) -> JobSpec:
    return JobSpec(
        input="unused",
        output="unused",
        model=model,
        steps=steps,
        guidance_scale=guidance,
        height=SIZE[0],
        width=SIZE[1],
        device="cpu",
        dtype="float32",
        **kw,
    )


def single_call(pipe, prompt: str, seed: int, steps: int, guidance: float, output_type: str, **kw):
    """The plain pipeline for one prompt and seed (a fresh list: ZImagePipeline rewrites its prompt list)."""
    return pipe(
        prompt=[prompt],
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=SIZE[0],
        width=SIZE[1],
        generator=[torch.Generator("cpu").manual_seed(seed)],
        output_type=output_type,
        **kw,
    ).images[0]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tiny_model_dir):
    """(model, default guidance, the plain pipeline)."""
    model, guidance = FAMILIES[request.param]
    return model, guidance, plain_pipeline(model)


@pytest.fixture(scope="module")
def single_images(family):
    """Each prompt's image from its own plain pipeline call, 2 steps."""
    model, guidance, pipe = family
    return [single_call(pipe, p, s, 2, guidance, "np") for p, s in zip(PROMPTS, SEEDS)]


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_images_are_within_one_level_of_single_calls(family, single_images, batch_size):
    """The renderer's uint8 images (sampler, decode, post-process) for 8 prompts of very different
    lengths in batches of 1, 3 and 8 against one plain pipeline call per prompt."""
    model, guidance, pipe = family
    renderer = PipelineRenderer(pipe, spec(model, 2, guidance, batch_size=batch_size), "cpu")
    rows = [Row(i, str(i), p, None, s) for i, (p, s) in enumerate(zip(PROMPTS, SEEDS))]
    results = list(renderer.render(rows))
    assert all(isinstance(r, Rendered) for r in results)
    assert {r.batch_size for r in results} == {1: {1}, 3: {3, 2}, 8: {8}}[batch_size]
    assert [r.truncated for r in results] == [i == 1 for i in range(8)]
    for r, want in zip(results, single_images):
        assert_within_one_level(r.image, (want * 255).round().astype(np.uint8), r.row.key)
    assert all(r.image.std() > 1 for r in results)  # images with content: the comparison means something
    assert len({r.image.tobytes() for r in results}) == 8


@pytest.mark.parametrize("steps", range(1, 9))
def test_latents_follow_single_calls_for_1_to_8_steps(family, steps):
    """Mixed lengths in one batch: each row's decoder input is the single call's (within float
    noise beside rows of other lengths; bit for bit alone)."""
    model, guidance, pipe = family
    sampler = TurboSampler(pipe, spec(model, steps, guidance), "cpu")
    decoder = Decoder(pipe, sampler.family)
    rows = [0, 1, 2]  # short, truncated, empty
    batch, _ = sampler.sample([PROMPTS[i] for i in rows], None, [SEEDS[i] for i in rows])
    for j, i in enumerate(rows):
        want = single_call(pipe, PROMPTS[i], SEEDS[i], steps, guidance, "latent")
        if sampler.family.name == "z-image":  # its "latent" output is before the VAE's scaling
            want = decoder.vae_input(want[None], torch.float32)[0]
        if j == 0:  # alone in its batch: bit for bit
            alone, _ = sampler.sample([PROMPTS[i]], None, [SEEDS[i]])
            assert torch.equal(decoder.vae_input(alone, torch.float32)[0], want)
        got = decoder.vae_input(batch, torch.float32)[j]
        assert torch.allclose(got, want, atol=1e-4), (i, (got - want).abs().max())


def test_diffusers_batched_call_rewrites_the_prompts_and_ours_does_not(family):
    """ZImagePipeline templates the caller's prompt list in place: a list passed twice is encoded
    templated twice, and its second call makes other images. The sampler leaves its input alone,
    so the same rows always make the same images (klein's pipeline copies the list)."""
    model, guidance, pipe = family
    prompts = PROMPTS[:2]
    pipe(prompt=prompts, num_inference_steps=1, guidance_scale=guidance, height=16, width=16, output_type="latent")
    rewritten = prompts != PROMPTS[:2]
    assert rewritten == (model == "tiny-z-image-turbo")
    mine = list(PROMPTS[:2])
    TurboSampler(pipe, spec(model, 1, guidance), "cpu").sample(mine, None, SEEDS[:2])
    assert mine == PROMPTS[:2]


def test_guidance_and_negative_prompts_follow_the_pipeline(family):
    """Guidance on (Z-Image: any scale > 0, with negative prompts; klein: the undistilled base model,
    scale > 1, the empty prompt as negative): latents equal the pipeline's batched call bit for bit."""
    model, _, pipe = family
    pipe = copy.copy(pipe)
    negatives = ["blurry", "low quality, " * 80, ""]
    kw: dict = {}
    if model == "tiny-flux2-klein":
        pipe.register_to_config(is_distilled=False)
        negatives = None
    else:
        kw["negative_prompt"] = list(negatives)
    try:
        want = pipe(
            prompt=list(PROMPTS[:3]),
            num_inference_steps=2,
            guidance_scale=3.0,
            height=SIZE[0],
            width=SIZE[1],
            generator=[torch.Generator("cpu").manual_seed(s) for s in SEEDS[:3]],
            output_type="latent",
            **kw,
        ).images
        sampler = TurboSampler(pipe, spec(model, 2, 3.0), "cpu")
        assert sampler.uses_cfg(3.0)
        latents, _ = sampler.sample(PROMPTS[:3], negatives, SEEDS[:3])
        if model == "tiny-flux2-klein":
            latents = Decoder(pipe, sampler.family).vae_input(latents, torch.float32)
        assert torch.equal(latents, want)
    finally:
        if model == "tiny-flux2-klein":
            pipe.register_to_config(is_distilled=True)


def test_each_schedule_is_prepared_once_per_steps_and_size(family, monkeypatch):
    """The flow schedules shift with the image size: prepared once per (steps, size), not per batch."""
    model, guidance, pipe = family
    sampler = TurboSampler(pipe, spec(model, 1, guidance), "cpu")
    prepared = []
    real = type(pipe.scheduler).set_timesteps
    monkeypatch.setattr(
        type(pipe.scheduler), "set_timesteps", lambda self, *a, **kw: prepared.append(1) or real(self, *a, **kw)
    )
    for p in [
        SamplingParams(2, guidance, 32, 24),
        SamplingParams(2, guidance, 32, 24),
        SamplingParams(1, guidance, 16, 16),
    ]:
        sampler.sample(PROMPTS[:1], None, SEEDS[:1], None, p)
    assert len(prepared) == 2
    assert sorted(sampler._schedulers) == [(1, 8, 8), (1, 24, 20), (2, 16, 12)]


def test_no_step_looks_up_its_index_and_no_value_is_read_back(family, monkeypatch):
    """No ``index_for_timestep`` (a .nonzero().item() per step) and no ``.item()`` / ``.tolist()``
    anywhere in the batch's sampling."""
    model, guidance, pipe = family
    sampler = TurboSampler(pipe, spec(model, 3, guidance), "cpu")
    before = pipe.scheduler.step_index

    def sync(*args, **kwargs):
        raise AssertionError("a host read of a device value")

    monkeypatch.setattr(type(pipe.scheduler), "index_for_timestep", sync)
    monkeypatch.setattr(torch.Tensor, "item", sync)
    monkeypatch.setattr(torch.Tensor, "tolist", sync)
    latents, _ = sampler.sample(PROMPTS[:2], None, SEEDS[:2])
    assert latents.shape[0] == 2
    assert pipe.scheduler.step_index == before  # the pipeline's own scheduler is left untouched


def test_what_a_family_cannot_sample_is_a_value_error(family):
    model, guidance, pipe = family
    sampler = TurboSampler(pipe, spec(model, 1, guidance), "cpu")
    with pytest.raises(ValueError, match="multiples of 4; got 40x42"):
        sampler.sample(PROMPTS[:1], None, SEEDS[:1], None, SamplingParams(1, guidance, 42, 40))
    if model == "tiny-flux2-klein":
        with pytest.raises(ValueError, match="no negative prompt"):
            sampler.sample(PROMPTS[:1], ["blurry"], SEEDS[:1])
