"""img2img in the one sampler against diffusers' own img2img pipelines, on the tiny twins (CPU).

For SD and SDXL, 1-4 steps and several strengths, the renderer's images are within 1 level of
``AutoPipelineForImage2Image`` (StableDiffusionImg2ImgPipeline / StableDiffusionXLImg2ImgPipeline)
for the same init images, prompts, seeds and strength, at batch sizes 1 and 8; the sampler's
latents equal the pipeline's bit for bit when the batch is one row (the pipeline encodes row by
row; a batched encode differs only in the kernels' summation order).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import assert_within_one_level
from turbobatch.models.tiny import tiny_model_path
from turbobatch.spec.resolved import ResolvedJob
from turbobatch.workers.batches import PipelineRenderer, Rendered
from turbobatch.workers.families.base import Family
from turbobatch.workers.rows import Row
from turbobatch.workers.sampler import TurboSampler

SIZE = (48, 40)  # height, width
PROMPTS = ["a red fox in the snow", "a lighthouse at dusk", "", "a bowl of fruit"] * 2  # 8 rows
SEEDS = [7, 2**40 + 3, 0, 11, 12, 13, 14, 15]
FAMILIES = {"sd": "tiny-sd-turbo", "sdxl": "tiny-sdxl-turbo"}


def init_images(n: int = len(PROMPTS)) -> list[Image.Image]:
    """Smooth images with structure (gradients and a block), at the render size."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0 : SIZE[0], 0 : SIZE[1]]
    images = []
    for _ in range(n):
        base = np.stack([x * 255 / SIZE[1], y * 255 / SIZE[0], np.full_like(x, rng.integers(0, 256))], -1)
        base[10:30, 8:24] = rng.integers(0, 256, 3)
        images.append(Image.fromarray(base.astype(np.uint8)))
    return images


def plain_img2img(model: str):
    from diffusers import AutoPipelineForImage2Image

    pipe = AutoPipelineForImage2Image.from_pretrained(tiny_model_path(model))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def plain_t2i(model: str):
    from diffusers import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(tiny_model_path(model))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def job(model: str, steps: int, strength: float, batch_size: int = 8) -> ResolvedJob:
    return ResolvedJob(
        input="unused",
        output="unused",
        model=model,
        steps=steps,
        height=SIZE[0],
        width=SIZE[1],
        device="cpu",
        dtype="float32",
        init_image_column="init",
        strength=strength,
        batch_size=batch_size,
    )


def reference(pipe, steps: int, strength: float, images, output_type: str, rows=slice(None)):
    return pipe(
        prompt=PROMPTS[rows],
        image=images[rows],
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=0.0,
        generator=[torch.Generator("cpu").manual_seed(s) for s in SEEDS[rows]],
        output_type=output_type,
    ).images


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    model = FAMILIES[request.param]
    return model, plain_img2img(model), plain_t2i(model)


@pytest.mark.parametrize(("steps", "strength"), [(1, 1.0), (2, 0.5), (3, 0.7), (4, 0.25), (4, 0.9)])
def test_one_row_latents_equal_the_img2img_pipelines_bit_for_bit(family, steps, strength):
    model, img2img, t2i = family
    images = init_images()
    for i in range(2):
        expected = reference(img2img, steps, strength, images, "latent", slice(i, i + 1))
        latents, _ = TurboSampler(t2i, job(model, steps, strength), "cpu").sample(
            PROMPTS[i : i + 1], None, SEEDS[i : i + 1], init_images=images[i : i + 1], strength=strength
        )
        assert torch.equal(latents, expected), (steps, strength, i)


@pytest.mark.parametrize("batch_size", [1, 8])
@pytest.mark.parametrize(("steps", "strength"), [(1, 1.0), (2, 0.5), (3, 0.7), (4, 0.6)])
def test_images_within_one_level_of_the_img2img_pipelines(family, steps, strength, batch_size):
    """The renderer (batched encode, decode, post-process) against the pipeline's own images for
    all 8 rows, at batch sizes 1 and 8."""
    model, img2img, t2i = family
    images = init_images()
    expected = reference(img2img, steps, strength, images, "np")
    renderer = PipelineRenderer(t2i, job(model, steps, strength, batch_size), "cpu")
    rows = [
        Row(i, str(i), p, None, s, init_image=images[i], strength=strength)
        for i, (p, s) in enumerate(zip(PROMPTS, SEEDS))
    ]
    results = list(renderer.render(rows))
    assert all(isinstance(r, Rendered) for r in results)
    assert {r.batch_size for r in results} == {batch_size}
    for r, want in zip(results, expected):
        assert_within_one_level(r.image, (want * 255).round().astype(np.uint8), r.row.key)
    # the init image shows through at low strength: images differ from a text-to-image render
    assert any(r.image.std() > 1 for r in results)


def test_init_image_matters(family):
    """Two init images, same prompt and seed: different images (the init image is used at all)."""
    model, _, t2i = family
    images = init_images(2)
    sampler = TurboSampler(t2i, job(model, 2, 0.5), "cpu")
    a, _ = sampler.sample(["x"], None, [1], init_images=images[:1], strength=0.5)
    b, _ = sampler.sample(["x"], None, [1], init_images=images[1:2], strength=0.5)
    assert not torch.equal(a, b)


def test_start_index_is_diffusers_get_timesteps():
    start_index = Family.img2img_start  # the UNet families' rule (Z-Image's: test_img2img_zimage.py)
    assert start_index(4, 0.5) == 2
    assert start_index(3, 0.7) == 1  # int(2.1) = 2 steps run
    assert start_index(1, 1.0) == 0
    assert start_index(2, 0.5, order=2) == 2
    with pytest.raises(ValueError, match="no denoising step"):
        start_index(2, 0.4)
