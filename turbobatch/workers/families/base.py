"""What every model family gives the one sampler loop (workers/sampler.py): the small parts in
which SD, SDXL, Z-Image and FLUX.2 klein differ, each written as that family's pipeline does it.

A family part never reads a device value back on the host (no ``.item()``, no boolean indexing of
device tensors): what the loop needs on the host (lengths, masks) comes from the tokenizer, which
runs on the host anyway.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from turbobatch.spec.sampling import SamplingParams


@dataclass
class Conditioning:
    """Text conditioning of a batch, in the form the family's denoiser takes it.

    ``embeds``: a tensor [B or 2B, tokens, width] (SD/SDXL: negative half first when guidance is
    on; FLUX.2: the positive prompts) or a list of per-prompt tensors (Z-Image: padding dropped,
    positive prompts first, then the negatives). ``negative``: FLUX.2's separate negative embeds."""

    embeds: Any
    added: dict[str, torch.Tensor] | None  # SDXL: pooled text embeds and size ids
    truncated: list[bool]  # prompt longer than the tokenizer's limit (rendered cut off)
    negative: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class Family:
    """Defaults shared by the families; each subclass overrides the parts it does differently."""

    name = "?"
    latent_dtype_follows_text = True  # noise drawn in the text embeddings' dtype (SD, SDXL, FLUX.2)

    def __init__(self, pipe: Any, device: torch.device) -> None:
        self.pipe = pipe
        self.device = device

    # -- guidance and schedule -------------------------------------------------------------
    def uses_cfg(self, guidance_scale: float) -> bool:
        raise NotImplementedError

    def schedule_key(self, p: SamplingParams) -> Hashable:
        """What the prepared scheduler depends on: the step count (and the size where the shift does)."""
        return p.steps

    def prepared_scheduler(self, p: SamplingParams) -> Any:
        """A fresh copy of the pipeline's scheduler with its timesteps set on the device."""
        scheduler = copy.deepcopy(self.pipe.scheduler)  # the pipeline's own stays untouched
        scheduler.set_timesteps(p.steps, device=self.device)
        return scheduler

    def check(self, p: SamplingParams) -> None:
        """ValueError for parameters the family cannot sample (a row with them fails alone)."""

    # -- the loop's parts --------------------------------------------------------------------
    def encode(self, prompts: list[str], negatives: list[str] | None, p: SamplingParams, cfg: bool) -> Conditioning:
        raise NotImplementedError

    def add_control(self, cond: Conditioning, images: list[Any] | None, p: SamplingParams, cfg: bool) -> None:
        """Control images into ``cond`` (UNet families with a ControlNet); others take none."""
        if images is not None:
            raise ValueError(f"{self.name} has no ControlNet pipeline here; a batch came with control images")

    def initial_latents(
        self, p: SamplingParams, generators: list[torch.Generator], scheduler: Any, cond: Conditioning
    ) -> torch.Tensor:
        raise NotImplementedError

    def predict(
        self, scheduler: Any, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning, p: SamplingParams, cfg: bool
    ) -> torch.Tensor:
        """The guided model output the scheduler steps with."""
        raise NotImplementedError

    def finish(self, latents: torch.Tensor, p: SamplingParams) -> torch.Tensor:
        """The batch's final latents in the layout the decoder takes (default: as stepped)."""
        return latents

    def vae_input(self, latents: torch.Tensor, vae: Any, dtype: torch.dtype) -> torch.Tensor | None:
        """Final latents -> what ``vae.decode`` takes, in ``dtype``; None: the Decoder's own
        scaling (SD, SDXL: scaling factor, and latents mean/std where the VAE config has them)."""
        return None

    # -- helpers -----------------------------------------------------------------------------
    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A host tensor on the device; on CUDA through pinned memory, so the copy does not wait
        for the work already queued (a pageable copy would synchronise the host)."""
        if self.device.type != "cuda":
            return tensor.to(self.device)
        return tensor.pin_memory().to(self.device, non_blocking=True)

    @staticmethod
    def truncated(tokenizer: Any, texts: list[str], limit: int) -> list[bool]:
        lengths = tokenizer(texts, truncation=False, verbose=False).input_ids
        return [len(ids) > limit for ids in lengths]
