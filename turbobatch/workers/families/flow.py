"""What the flow-matching DiT families (Z-Image, FLUX.2 klein) share: 2x2 latent patches, so
image sides must be multiples of twice the VAE's scale; a FlowMatchEuler schedule whose shift
depends on the image size (prepared once per step count and size); no ControlNet here; img2img
noises with the flow-matching forward process (``scale_noise``), not ``add_noise``."""

from __future__ import annotations

import copy
from typing import Any

import torch

from turbobatch.spec.sampling import SamplingParams
from turbobatch.workers.families.base import Family


class FlowFamily(Family):
    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this (the VAE's scale times the 2x2 patch)."""
        return self.pipe.vae_scale_factor * 2

    def latent_size(self, p: SamplingParams) -> tuple[int, int]:
        """The pipelines' ``prepare_latents``: 2 * (side // (vae scale * 2))."""
        return 2 * (p.height // self.multiple), 2 * (p.width // self.multiple)

    def check(self, p: SamplingParams) -> None:
        if p.height % self.multiple or p.width % self.multiple:
            raise ValueError(
                f"{self.name} renders sizes whose sides are multiples of {self.multiple}; got {p.width}x{p.height}"
            )

    def prepared_scheduler(self, p: SamplingParams) -> Any:
        scheduler = copy.deepcopy(self.pipe.scheduler)  # the pipeline's own stays untouched
        self.set_timesteps(scheduler, p)
        return scheduler

    def set_timesteps(self, scheduler: Any, p: SamplingParams) -> None:
        raise NotImplementedError

    def noised(self, scheduler: Any, init: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """``sigma * noise + (1 - sigma) * init`` at the begin index's sigma (the flow pipelines'
        ``prepare_latents``: ``scheduler.scale_noise``)."""
        return scheduler.scale_noise(init, timestep, noise)
