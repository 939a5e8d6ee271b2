"""One small object per model family: the parts of a batch's sampling and decoding in which the
families differ (workers/sampler.py runs the one loop over them; workers/decode.py decodes with
``vae_input``). Which family a pipeline is comes from its class.

Imports torch, diffusers, spec/, models/families.py and its own modules only; nothing else of
workers/ (the sampler and decoder import it, not the other way round)."""

from __future__ import annotations

from typing import Any

import torch

from turbobatch.models.families import FAMILY_OF_PIPELINE
from turbobatch.workers.families.base import Conditioning, Family

__all__ = ["Conditioning", "Family", "family_for", "family_name"]

# The job's pipeline classes (models/families.py); a ControlNet pipeline samples as its base family.
_BY_PIPELINE = {
    **FAMILY_OF_PIPELINE,
    "StableDiffusionControlNetPipeline": "sd",
    "StableDiffusionXLControlNetPipeline": "sdxl",
}


def family_name(pipe: Any) -> str:
    name = type(pipe).__name__
    if name not in _BY_PIPELINE:
        raise ValueError(f"no sampler family for a {name}; supported: {', '.join(_BY_PIPELINE)}")
    return _BY_PIPELINE[name]


def family_for(pipe: Any, device: str | torch.device, controlnet_scale: float = 1.0) -> Family:
    """The family object of ``pipe`` (imported here, so a worker loads only its own)."""
    device = torch.device(device)
    name = family_name(pipe)
    if name == "sd":
        from turbobatch.workers.families.sd import SD

        return SD(pipe, device, controlnet_scale)
    if name == "sdxl":
        from turbobatch.workers.families.sdxl import SDXL

        return SDXL(pipe, device, controlnet_scale)
    if name == "z-image":
        from turbobatch.workers.families.zimage import ZImage

        return ZImage(pipe, device)
    from turbobatch.workers.families.flux2 import Flux2Klein

    return Flux2Klein(pipe, device)
