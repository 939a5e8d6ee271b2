"""What the worker is measured against, side by side in one run (benchmarks/gpu.py):

- ``naive_loop``: what a user writes first: ``pipe(prompts).images`` per batch, then PIL saves;
- ``previous_worker``: the turbobatch worker as it was before the direct sampler: the
  pipeline's own ``__call__`` (``output_type="latent"``) per batch, one batch at a time, then the
  worker's decode, kernels and writer. Its ``__call__`` synchronises the host in every step
  (SD's scheduler looks its step index up with ``.nonzero().item()``; host tensors are copied
  from pageable memory), which is what the direct sampler removes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from turbobatch.spec.resolved import ResolvedJob
from turbobatch.spec.sampling import SamplingParams
from turbobatch.workers.actor import RenderWorker
from turbobatch.workers.families import family_for


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def naive_loop(
    pipe: Any,
    prompts: list[str],
    batch: int,
    size: int,
    out: Path,
    device: str,
    steps: int = 1,
    guidance_scale: float = 0.0,
) -> float:
    """Images/s of the plain loop, JPEG saves included."""
    sync(device)
    started = time.perf_counter()
    for i in range(0, len(prompts), batch):
        images = pipe(
            prompt=prompts[i : i + batch],  # by name: FLUX.2 klein's first argument is a reference image
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            height=size,
            width=size,
        ).images
        for j, image in enumerate(images):
            image.save(out / f"{i + j:06d}.jpg", quality=95)
    sync(device)
    return len(prompts) / (time.perf_counter() - started)


class PipelineCallSampler:
    """The previous worker's sampling: ``pipe(..., output_type="latent")`` with per-row generators."""

    def __init__(self, pipe: Any, spec: ResolvedJob, device: str) -> None:
        self.pipe, self.spec, self.device = pipe, spec, device
        self.params = spec.sampling()  # the renderer groups rows by these (as for TurboSampler)
        self.family = family_for(pipe, device)  # the renderer asks it (img2img's start rule; none here)

    def sample(
        self,
        prompts: list[str],
        negatives: list[str] | None,
        seeds: list[int],
        control_images: list[Any] | None = None,
        params: SamplingParams | None = None,
    ) -> tuple[torch.Tensor, list[bool]]:
        spec, tokenizer, p = self.spec, self.pipe.tokenizer, params or self.params
        extra = (
            {"image": control_images, "controlnet_conditioning_scale": spec.controlnet_scale} if control_images else {}
        )
        if negatives is not None:  # FLUX.2 klein takes none
            extra["negative_prompt"] = negatives
        latents = self.pipe(
            prompt=prompts,
            num_inference_steps=p.steps,
            guidance_scale=p.guidance_scale,
            height=p.height,
            width=p.width,
            generator=[torch.Generator(self.device).manual_seed(s) for s in seeds],
            output_type="latent",
            **extra,
        ).images
        truncated = [len(ids) > tokenizer.model_max_length for ids in tokenizer(prompts, truncation=False).input_ids]
        return latents, truncated


def previous_worker(spec: ResolvedJob, pipe: Any) -> RenderWorker:
    """A worker that samples through the pipeline's ``__call__``, one batch at a time, no speedups."""
    worker = RenderWorker(spec, pipe)
    worker.renderer.sampler = PipelineCallSampler(pipe, spec, spec.device)
    worker.renderer.in_flight = 1
    return worker
