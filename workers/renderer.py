"""Run the pipeline on validated rows and return uint8 images.

Each row gets its own ``torch.Generator(device).manual_seed(seed)``, so its noise is what a
plain diffusers call with that generator draws, whatever batch it lands in. On CPU the
renderer makes one pipeline call per row: oneDNN's convolution and GEMM kernels give results
that depend on the batch size (differences of ~1e-6 seen here), and one row per call keeps CPU
images bitwise equal to a plain call. On CUDA rows are batched.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from jobs.spec import JobSpec
from kernels import postprocess_uint8
from workers.rows import Row


@dataclass
class Rendered:
    row: Row
    image: np.ndarray  # uint8 HWC
    render_ms: float
    truncated: bool


class PipelineRenderer:
    def __init__(self, pipe: Any, spec: JobSpec, device: str) -> None:
        self.pipe = pipe
        self.spec = spec
        self.device = torch.device(device)
        self.rows_per_call = 1 if self.device.type == "cpu" else spec.batch_size

    def render(self, rows: list[Row]) -> Iterator[Rendered]:
        """Render valid rows, in order, ``rows_per_call`` at a time."""
        for start in range(0, len(rows), self.rows_per_call):
            yield from self._render_call(rows[start : start + self.rows_per_call])

    @torch.inference_mode()
    def _render_call(self, rows: list[Row]) -> list[Rendered]:
        started = time.perf_counter()
        latents = self.pipe(
            prompt=[r.prompt for r in rows],
            negative_prompt=self._negative_prompts(rows),
            num_inference_steps=self.spec.steps,
            guidance_scale=self.spec.guidance_scale,
            height=self.spec.height,
            width=self.spec.width,
            generator=[torch.Generator(self.device).manual_seed(r.seed) for r in rows],
            output_type="latent",
        ).images
        images = postprocess_uint8(self._decode(latents)).cpu().numpy()
        ms = (time.perf_counter() - started) * 1000 / len(rows)
        return [Rendered(r, img, ms, self._is_truncated(r.prompt)) for r, img in zip(rows, images)]

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE decode exactly as the pipeline does it for output_type='np'."""
        vae = self.pipe.vae
        return vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]

    def _negative_prompts(self, rows: list[Row]) -> list[str] | None:
        if not self.spec.negative_prompt_column:
            return None
        return [r.negative_prompt or "" for r in rows]  # diffusers treats None as ""

    def _is_truncated(self, prompt: str) -> bool:
        tokenizer = self.pipe.tokenizer
        ids = tokenizer(prompt, truncation=False, verbose=False).input_ids
        return len(ids) > tokenizer.model_max_length
