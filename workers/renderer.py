"""Run the pipeline on validated rows and return uint8 images.

Each row gets its own ``torch.Generator(device).manual_seed(seed)``, so its noise is what a
plain diffusers call with that generator draws, whatever batch it lands in. On CPU the
renderer makes one pipeline call per row: oneDNN's convolution and GEMM kernels give results
that depend on the batch size (differences of ~1e-6 seen here), and one row per call keeps CPU
images bitwise equal to a plain call. On CUDA rows are batched.

A call that raises is not the shard's end: on GPU out-of-memory the batch is halved (down to
one row, and the smaller size is kept), on any other exception the batch is retried row by
row, so only the row that raises fails; it comes back as its ``Row`` with ``error`` set.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from jobs.spec import JobSpec
from kernels import postprocess_uint8
from workers import faults
from workers.rows import Row


@dataclass
class Rendered:
    row: Row
    image: np.ndarray  # uint8 HWC
    render_ms: float
    truncated: bool
    redecoded_fp32: bool = False  # the fp16 decode gave NaN/Inf, so this image was decoded in float32
    batch_size: int = 1  # rows in the pipeline call that made this image


class PipelineRenderer:
    def __init__(self, pipe: Any, spec: JobSpec, device: str) -> None:
        self.pipe = pipe
        self.spec = spec
        self.device = torch.device(device)
        self.rows_per_call = 1 if self.device.type == "cpu" else spec.batch_size
        self._vae_fp32: Any = None  # made once, on first need (see _decode)

    def render(self, rows: list[Row]) -> Iterator[Rendered | Row]:
        """Render valid rows, in order, ``rows_per_call`` at a time.

        Yields a ``Rendered`` per row, or the ``Row`` itself with ``error`` set when the
        pipeline raised on it.
        """
        start = 0
        while start < len(rows):
            batch = rows[start : start + self.rows_per_call]
            yield from self._render_resilient(batch)
            start += len(batch)

    def _render_resilient(self, rows: list[Row]) -> list[Rendered | Row]:
        try:
            return self._render_call(rows)
        except torch.OutOfMemoryError:
            if len(rows) == 1:
                raise  # nothing left to halve: the shard fails with the OOM
            self._free_cached_memory()
            size = self.rows_per_call
            while size >= len(rows):  # halve (8 -> 4 -> 2 -> 1) until below the call that failed
                size //= 2
            self.rows_per_call = size  # keep the size that fits for the rest of the run
            chunks = [rows[i : i + size] for i in range(0, len(rows), size)]
            return [result for chunk in chunks for result in self._render_resilient(chunk)]
        except Exception as e:  # noqa: BLE001 - a row's failure is recorded, not raised
            if len(rows) == 1:
                rows[0].error = f"pipeline raised {type(e).__name__}: {e}"[:2000]
                return [rows[0]]
            return [result for row in rows for result in self._render_resilient([row])]

    def _free_cached_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @torch.inference_mode()
    def _render_call(self, rows: list[Row]) -> list[Rendered]:
        started = time.perf_counter()
        faults.before_pipeline_call([r.prompt for r in rows])  # test-only; a no-op unless configured
        latents = self.pipe(
            prompt=[r.prompt for r in rows],
            negative_prompt=self._negative_prompts(rows),
            num_inference_steps=self.spec.steps,
            guidance_scale=self.spec.guidance_scale,
            height=self.spec.height,
            width=self.spec.width,
            generator=[torch.Generator(self.device).manual_seed(r.seed) for r in rows],
            output_type="latent",
            **self._control_args(rows),
        ).images
        decoded, redecoded = self._decode(latents)
        images = postprocess_uint8(decoded).cpu().numpy()
        ms = (time.perf_counter() - started) * 1000 / len(rows)
        return [
            Rendered(r, img, ms, self._is_truncated(r.prompt), bool(again), batch_size=len(rows))
            for r, img, again in zip(rows, images, redecoded)
        ]

    def _control_args(self, rows: list[Row]) -> dict[str, Any]:
        if not self.spec.controlnet:
            return {}
        return {"image": [r.control_image for r in rows], "controlnet_conditioning_scale": self.spec.controlnet_scale}

    def _decode(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE decode as the pipeline does it, except for fp16 VAEs that need float32.

        diffusers upcasts such a VAE (SDXL's, ``force_upcast``) to float32 and back on every
        call. We decode in float16 and decode again in float32, with a float32 copy of the VAE
        made once, only the images whose float16 decode holds NaN or Inf.
        """
        vae = self.pipe.vae
        scaled = self._unscale(latents, vae.config)
        decoded = vae.decode(scaled.to(vae.dtype), return_dict=False)[0]
        broken = ~torch.isfinite(decoded).flatten(1).all(dim=1)
        if broken.any() and vae.dtype == torch.float16:
            if self._vae_fp32 is None:
                self._vae_fp32 = copy.deepcopy(vae).to(torch.float32)
            again = self._vae_fp32.decode(scaled[broken].float(), return_dict=False)[0]
            decoded = decoded.float()
            decoded[broken] = again
        else:
            broken = torch.zeros_like(broken)
        return decoded, broken.cpu()

    @staticmethod
    def _unscale(latents: torch.Tensor, config: Any) -> torch.Tensor:
        """Undo the VAE's latent scaling (and SDXL-style mean/std when the VAE config has them)."""
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            mean = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            return latents * std / config.scaling_factor + mean
        return latents / config.scaling_factor

    def _negative_prompts(self, rows: list[Row]) -> list[str] | None:
        if not self.spec.negative_prompt_column:
            return None
        return [r.negative_prompt or "" for r in rows]  # diffusers treats None as ""

    def _is_truncated(self, prompt: str) -> bool:
        tokenizer = self.pipe.tokenizer
        ids = tokenizer(prompt, truncation=False, verbose=False).input_ids
        return len(ids) > tokenizer.model_max_length
