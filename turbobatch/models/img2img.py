"""Which model families render img2img (--init-image-column), checked on the driver.

A family is supported when diffusers has an img2img pipeline for it whose start latents the
sampler reproduces (workers/img2img.py with the family's parts). FLUX.2 klein has none:
Flux2KleinPipeline's ``image=`` adds the image as reference tokens next to the prompt (no
strength, the latents still start from pure noise), and Flux2KleinInpaintPipeline needs a mask.
"""

from __future__ import annotations

from turbobatch.errors import JobError
from turbobatch.models.families import FAMILIES
from turbobatch.models.resolve import ModelInfo
from turbobatch.spec.job import JobSpec, check_denoises

# text-to-image pipeline class -> the diffusers img2img pipeline its images are compared with
IMG2IMG_PIPELINES = {
    "StableDiffusionPipeline": "StableDiffusionImg2ImgPipeline",
    "StableDiffusionXLPipeline": "StableDiffusionXLImg2ImgPipeline",
    "ZImagePipeline": "ZImageImg2ImgPipeline",
}
# pipelines without img2img -> why (what a user might take for it)
WHY_NONE = {
    "Flux2KleinPipeline": (
        "diffusers has no img2img pipeline for FLUX.2 klein (Flux2KleinPipeline's image= is reference "
        "conditioning, not a start image; Flux2KleinInpaintPipeline needs a mask)"
    ),
}


def check_img2img(spec: JobSpec, model: ModelInfo) -> None:
    """JobError before any actor starts when the job asks for img2img on a family without it."""
    if spec.init_image_column and model.pipeline_class not in IMG2IMG_PIPELINES:
        why = WHY_NONE.get(model.pipeline_class, "which has no img2img here")
        raise JobError(
            f"--init-image-column: --model {model.name!r} is a {model.pipeline_class}, {why}; "
            f"img2img works with {', '.join(IMG2IMG_PIPELINES)} models; drop --init-image-column"
        )
    if spec.init_image_column and spec.steps is None:  # the model's default step count
        check_denoises(FAMILIES[model.family].steps, spec.strength, "--steps (the model's default)", "--strength")
