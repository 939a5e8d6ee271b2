"""Z-Image img2img in the one sampler against diffusers' ZImageImg2ImgPipeline, on the tiny twin (CPU).

Each row's image is within 1 level of one plain ZImageImg2ImgPipeline call for that init image,
prompt, seed and strength, at batch sizes 1 and 8, for 1 to 4 steps (the flow pipelines' start
rule, the VAE's shift and ``scale_noise`` at the start sigma all show in these); alone in its
batch a row's latents equal the pipeline's bit for bit. Compared with single calls: Z-Image's
batched call pads captions per batch (tests/unit/workers/test_sampler_dit.py). FLUX.2 klein has
no img2img pipeline: its family part refuses, as the driver does (models/img2img.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import assert_within_one_level
from tests.unit.workers.test_control import plain_pipeline
from tests.unit.workers.test_img2img import init_images, job
from turbobatch.models.tiny import tiny_model_path
from turbobatch.workers.batches import PipelineRenderer, Rendered
from turbobatch.workers.decode import Decoder
from turbobatch.workers.families.base import Family
from turbobatch.workers.families.flux2 import Flux2Klein
from turbobatch.workers.families.zimage import ZImage
from turbobatch.workers.rows import Row
from turbobatch.workers.sampler import TurboSampler

MODEL = "tiny-z-image-turbo"
PROMPTS = ["a red fox in the snow", "cat", "", "a lighthouse at dusk, oil painting, " * 4] * 2  # 8 rows
SEEDS = [7, 2**40 + 3, 0, 11, 12, 13, 14, 15]
CASES = [(1, 1.0), (2, 0.5), (3, 0.7), (4, 0.6)]  # 0.6 of 4 steps: Z-Image runs 3, SD's rule 2


@pytest.fixture(scope="module")
def pipes():
    from diffusers import ZImageImg2ImgPipeline

    img2img = ZImageImg2ImgPipeline.from_pretrained(tiny_model_path(MODEL))
    img2img.set_progress_bar_config(disable=True)
    return img2img, plain_pipeline(MODEL)


def single_call(pipe, i: int, image, steps: int, strength: float, output_type: str):
    return pipe(
        prompt=[PROMPTS[i]],  # a fresh list: the pipeline templates its prompt list in place
        image=[image],
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=0.0,
        generator=[torch.Generator("cpu").manual_seed(SEEDS[i])],
        output_type=output_type,
    ).images[0]


@pytest.mark.parametrize(("steps", "strength"), CASES)
def test_one_row_latents_equal_the_img2img_pipeline_bit_for_bit(pipes, steps, strength):
    img2img, t2i = pipes
    images = init_images(1)
    sampler = TurboSampler(t2i, job(MODEL, steps, strength), "cpu")
    latents, _ = sampler.sample(PROMPTS[:1], None, SEEDS[:1], init_images=images, strength=strength)
    want = single_call(img2img, 0, images[0], steps, strength, "latent")  # before the VAE's scaling
    decoder = Decoder(t2i, sampler.family)
    assert torch.equal(decoder.vae_input(latents, torch.float32)[0], decoder.vae_input(want[None], torch.float32)[0])


@pytest.mark.parametrize(("steps", "strength"), CASES)
def test_images_within_one_level_of_the_img2img_pipeline(pipes, steps, strength):
    """The renderer (batched encode, decode, post-process) for 8 rows at batch sizes 1 and 8
    against one ZImageImg2ImgPipeline call per row."""
    img2img, t2i = pipes
    images = init_images()
    expected = [single_call(img2img, i, images[i], steps, strength, "np") for i in range(len(PROMPTS))]
    for batch_size in (1, 8):
        renderer = PipelineRenderer(t2i, job(MODEL, steps, strength, batch_size), "cpu")
        rows = [
            Row(i, str(i), p, None, s, init_image=images[i], strength=strength)
            for i, (p, s) in enumerate(zip(PROMPTS, SEEDS))
        ]
        results = list(renderer.render(rows))
        assert all(isinstance(r, Rendered) for r in results)
        assert {r.batch_size for r in results} == {batch_size}
        for r, want in zip(results, expected):
            assert_within_one_level(r.image, (want * 255).round().astype(np.uint8), f"{r.row.key} @ {batch_size}")
    assert all(r.image.std() > 1 for r in results)


def test_rows_group_by_the_z_image_start_step(pipes):
    """Strengths 0.5 and 0.6 of 4 steps start at one step for SD (2 run) but not for Z-Image
    (2 and 3 run): the renderer keeps them in separate calls, each as its own pipeline call."""
    img2img, t2i = pipes
    assert Family.img2img_start(4, 0.5) == Family.img2img_start(4, 0.6) == 2
    assert (ZImage.img2img_start(4, 0.5), ZImage.img2img_start(4, 0.6)) == (2, 1)
    images = init_images(2)
    strengths = [0.5, 0.6]
    renderer = PipelineRenderer(t2i, job(MODEL, 4, 0.5, 8), "cpu")
    rows = [Row(i, str(i), PROMPTS[i], None, SEEDS[i], init_image=images[i], strength=strengths[i]) for i in range(2)]
    results = list(renderer.render(rows))
    assert [r.batch_size for r in results] == [1, 1]
    for i, r in enumerate(results):
        want = single_call(img2img, i, images[i], 4, strengths[i], "np")
        assert_within_one_level(r.image, (want * 255).round().astype(np.uint8), r.row.key)


def test_z_image_start_rule_is_its_pipelines_get_timesteps(pipes):
    img2img, _ = pipes
    for steps in range(1, 5):
        for strength in (0.1, 0.25, 0.3, 0.5, 0.6, 0.7, 0.9, 1.0):
            img2img.scheduler.set_timesteps(steps)
            timesteps, runs = img2img.get_timesteps(steps, strength, "cpu")
            assert ZImage.img2img_start(steps, strength) == steps - runs, (steps, strength)
    with pytest.raises(ValueError, match="no denoising step"):
        ZImage.img2img_start(4, 0.0)


def test_flux2_klein_has_no_img2img_part():
    with pytest.raises(ValueError, match="no img2img pipeline.*reference conditioning"):
        Flux2Klein.img2img_start(4, 0.5)
