"""Sample one batch's latents: WHERE A BATCH IS SAMPLED, for every model family.

The loop below is what diffusers' ``__call__`` of each supported pipeline computes for
``output_type="latent"`` — same models, same order, same dtypes, same random draws from each
row's ``torch.Generator`` — written out once; the parts in which SD, SDXL, Z-Image and FLUX.2
klein differ (text encoding, noise layout, the model call and guidance, the schedule's shift) are
small named methods of one family object each (workers/families/). It runs from prompt to
latents with no host synchronisation (tests/unit/workers/test_sampler*.py check the images
against the pipelines' for every family):

- the scheduler's timesteps and sigmas are made once per worker and step count (and size, for
  the flow families, whose shift depends on it): ``set_timesteps`` copies them between host and
  device; each batch steps a shallow copy with ``set_begin_index(0)``, so no step looks its index
  up with ``.nonzero().item()``;
- host tensors (token ids, masks, control images) go to the device from pinned memory without
  blocking; what must be known on the host (a caption's length) comes from the tokenizer;
- nothing reads a device value back.

A batch samples with one ``SamplingParams`` (steps, guidance scale, height, width): the job's by
default, or the batch's own when images of a job differ in them (sweeps, per-row columns; the
renderer never mixes two in one call). ``encode`` and ``denoise`` are the two halves of
``sample``, so a shard's prompts can be encoded first and the text encoder freed (staging).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Hashable
from typing import Any

import torch

from turbobatch.spec.resolved import ResolvedJob
from turbobatch.spec.sampling import SamplingParams
from turbobatch.workers.families import Conditioning, Family, family_for
from turbobatch.workers.img2img import InitLatents

__all__ = ["Conditioning", "TurboSampler"]


class TurboSampler:
    """Latents for a batch of prompts and seeds, as the model's pipeline makes them."""

    def __init__(self, pipe: Any, spec: ResolvedJob, device: str | torch.device) -> None:
        self.pipe = pipe
        self.device = torch.device(device)
        self.family: Family = family_for(pipe, self.device, spec.controlnet_scale)
        self.params = spec.sampling()  # a batch without its own parameters samples with the job's
        self._schedulers: dict[Hashable, Any] = {}  # schedule key -> the scheduler with its timesteps set
        self._accepts_generator = "generator" in inspect.signature(pipe.scheduler.step).parameters
        self.init_latents = InitLatents(pipe, self.family)  # img2img's start: workers/img2img.py
        self._scheduler_for(self.params)  # the job's own, made before the first batch

    def uses_cfg(self, guidance_scale: float) -> bool:
        """The pipeline's ``do_classifier_free_guidance``."""
        return self.family.uses_cfg(guidance_scale)

    @torch.inference_mode()
    def sample(
        self,
        prompts: list[str],
        negatives: list[str] | None,
        seeds: list[int],
        control_images: list[Any] | None = None,
        params: SamplingParams | None = None,
        init_images: list[Any] | None = None,
        strength: float | None = None,
    ) -> tuple[torch.Tensor, list[bool]]:
        """Latents of the batch (on the device, still queued there) and which prompts were
        truncated. ``params``: the batch's (default: the job's). ``init_images`` (img2img, at the
        render size) start the rows from those images noised to ``strength``."""
        p = params or self.params
        cond = self.encode(prompts, negatives, p)
        return self.denoise(cond, seeds, control_images, p, init_images, strength), cond.truncated

    @torch.inference_mode()
    def encode(self, prompts: list[str], negatives: list[str] | None, params: SamplingParams) -> Conditioning:
        """1. Text encoders (tokenizing is the host's part of the batch)."""
        self.family.check(params)
        return self.family.encode(prompts, negatives, params, self.uses_cfg(params.guidance_scale))

    @torch.inference_mode()
    def denoise(
        self,
        cond: Conditioning,
        seeds: list[int],
        control_images: list[Any] | None,
        params: SamplingParams,
        init_images: list[Any] | None = None,
        strength: float | None = None,
    ) -> torch.Tensor:
        """2-4. Noise, the denoising steps and the family's final layout, from encoded prompts."""
        family, p = self.family, params
        cfg = self.uses_cfg(p.guidance_scale)
        # 2. Noise, one generator per row: row i's noise does not depend on its batch-mates.
        generators = [torch.Generator(self.device).manual_seed(seed) for seed in seeds]
        scheduler = copy.copy(self._scheduler_for(p))
        scheduler.set_begin_index(0)
        if init_images is None:
            latents, timesteps = family.initial_latents(p, generators, scheduler, cond), scheduler.timesteps
        else:  # img2img: the init images encoded and noised to the start step (workers/img2img.py)
            latents, timesteps = self.init_latents.start(
                scheduler, init_images, strength, p.steps, generators, family.init_dtype(cond)
            )
        family.add_control(cond, control_images, p, cfg)
        step_kwargs = {"generator": generators} if self._accepts_generator else {}
        # 3. Denoising steps: the family's model call and guidance, then the scheduler step.
        for t in timesteps:
            noise = family.predict(scheduler, latents, t, cond, p, cfg)
            latents = scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
        # 4. The layout the decoder takes (FLUX.2: tokens back to a latent image).
        return family.finish(latents, p)

    def _scheduler_for(self, p: SamplingParams) -> Any:
        """The scheduler with its timesteps on the device, made once per step count (and size where
        the shift depends on it): ``set_timesteps`` moves them between host and device, never in a
        batch's hot path twice."""
        key = self.family.schedule_key(p)
        if key not in self._schedulers:
            self._schedulers[key] = self.family.prepared_scheduler(p)
        return self._schedulers[key]
