"""What the driver knows about each model family before any actor starts: the model card's
defaults (steps, guidance, dtype on CUDA), the license the card states, and the settings the
family cannot take, refused as a JobError naming the option, the value and what is valid."""

from __future__ import annotations

from dataclasses import dataclass

from turbobatch.errors import JobError
from turbobatch.spec.job import JobSpec


@dataclass(frozen=True)
class FamilyFacts:
    label: str  # how errors name it
    steps: int
    guidance_scale: float
    cuda_dtype: str
    license: str
    controlnet: bool  # has a ControlNet pipeline here
    unet: bool  # UNet-only options (--compile, unet_fused_norms) apply


FAMILIES: dict[str, FamilyFacts] = {
    "sd": FamilyFacts("SD 2.1 (sd-turbo)", 1, 0.0, "float16", "sai-nc-community", True, True),
    "sdxl": FamilyFacts("SDXL (sdxl-turbo)", 1, 0.0, "float16", "sai-nc-community", True, True),
    # ZImagePipeline's docstring example: 8 steps, guidance 0.0, 1024x1024 (since diffusers 0.39
    # 8 steps are 8 transformer calls, what the card's num_inference_steps=9 aimed at before).
    "z-image": FamilyFacts("Z-Image", 8, 0.0, "bfloat16", "apache-2.0", False, False),
    # The klein 4B card and diffusers' integration test: 4 steps, guidance 1.0 (step-distilled).
    "flux2-klein": FamilyFacts("FLUX.2 klein", 4, 1.0, "bfloat16", "apache-2.0", False, False),
}
FAMILY_OF_PIPELINE = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "ZImagePipeline": "z-image",
    "Flux2KleinPipeline": "flux2-klein",
}


def with_family_defaults(spec: JobSpec, family: str) -> dict[str, object]:
    """The fields a job left to the model: steps and guidance (dtype is resolve_spec's, by device)."""
    facts = FAMILIES[family]
    return {
        "steps": spec.steps if spec.steps is not None else facts.steps,
        "guidance_scale": spec.guidance_scale if spec.guidance_scale is not None else facts.guidance_scale,
    }


def check_family(spec: JobSpec, family: str, size_multiple: int, distilled: bool) -> None:
    """A resolved spec (steps, guidance, size set) against what ``family`` can sample."""
    facts = FAMILIES[family]
    if family in ("sd", "sdxl"):
        return
    for flag, value in (("controlnet", spec.controlnet), ("vae", spec.vae)):
        if value:
            refuse_component(flag, value, spec.model, family)
    if spec.compile != "off" or "unet_fused_norms" in spec.speedup_set:
        option = "--compile" if spec.compile != "off" else "--speedups unet_fused_norms"
        raise JobError(f"{option}: applies to UNet models (sd-turbo, sdxl-turbo); {facts.label} is a transformer")
    for name in ("height", "width"):
        value = getattr(spec, name)
        if value % size_multiple:
            raise JobError(
                f"--{name}: {value} is not a multiple of {size_multiple}; {facts.label} turns the latent image "
                f"into 2x2 patches, so image sides must be multiples of {size_multiple}"
            )
    _check_guidance(spec, family, facts, distilled)


def refuse_component(flag: str, value: str, model: str, family: str) -> None:
    """--controlnet / --vae with a family that takes none (checked before their configs are read)."""
    label = FAMILIES[family].label
    what = (
        f"{label} has no ControlNet pipeline here (ControlNets work with sd-turbo and sdxl-turbo models)"
        if flag == "controlnet"
        else f"the VAE of {label} models cannot be replaced here"
    )
    raise JobError(f"--{flag}: {value!r} cannot be used with --model {model!r}: {what}; drop --{flag}")


def _check_guidance(spec: JobSpec, family: str, facts: FamilyFacts, distilled: bool) -> None:
    if family == "flux2-klein":
        if spec.negative_prompt_column:
            raise JobError(
                f"--negative-prompt-column: {spec.negative_prompt_column!r} given, but {facts.label} takes no "
                "negative prompt (Flux2KleinPipeline has none); drop it"
            )
        if distilled and spec.guidance_scale > 1:
            raise JobError(
                f"--guidance-scale: {spec.guidance_scale:g} has no effect on the step-distilled {spec.model!r} "
                "(diffusers ignores it); use 1.0, or a klein base model for guidance"
            )
    elif spec.negative_prompt_column and spec.guidance_scale <= 0 and not spec.guidance_scale_column:
        raise JobError(
            f"--negative-prompt-column: {spec.negative_prompt_column!r} has no effect with guidance off "
            f"(--guidance-scale {spec.guidance_scale:g}; {facts.label} uses negative prompts only for a scale > 0); "
            "set --guidance-scale above 0 or drop the column"
        )
