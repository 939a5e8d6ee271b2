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

from turbobatch.spec.job import denoising_steps
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

    # -- img2img's parts (workers/img2img.py runs them; each is the family's img2img pipeline's) --
    @staticmethod
    def img2img_start(steps: int, strength: float, order: int = 1) -> int:
        """Index of the first timestep an img2img call runs: StableDiffusion(XL)Img2ImgPipeline's
        ``get_timesteps`` (``int(steps * strength)`` steps run). ValueError when none would run."""
        runs = denoising_steps(steps, strength)
        if runs < 1:
            raise ValueError(f"strength {strength} with {steps} steps runs no denoising step (steps * strength < 1)")
        return (steps - runs) * order

    def init_dtype(self, cond: Conditioning) -> torch.dtype:
        """The dtype the init image is encoded and noised in: the prompt embeddings'."""
        return cond.embeds.dtype

    def encoded_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE latents -> the denoiser's latent space: times the scaling factor (with the VAE's
        latents mean/std where its config has them, as SDXL's pipeline does)."""
        config = self.pipe.vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            channels = latents.shape[1]
            mean = torch.tensor(mean).view(1, channels, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(std).view(1, channels, 1, 1).to(latents.device, latents.dtype)
            return (latents - mean) * config.scaling_factor / std
        return config.scaling_factor * latents

    def noised(self, scheduler: Any, init: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """Init latents noised to the start step (a scheduler with its begin index set)."""
        return scheduler.add_noise(init, noise, timestep)

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
