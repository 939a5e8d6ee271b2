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
from kernels import dhash64, postprocess_with_stats
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
    nan_count: int | None = None  # NaN/Inf values in the float decode of this image (after any float32 redo)
    mean: float | None = None  # of the uint8 image, all channels, 0..255
    std: float | None = None  # population std of the uint8 image, 0..255
    dhash: str | None = None  # kernels.dhash64 of the uint8 image, 16 lowercase hex digits (None below 8x9)


class PipelineRenderer:
    def __init__(self, pipe: Any, spec: JobSpec, device: str) -> None:
        self.pipe = pipe
        self.spec = spec
        self.device = torch.device(device)
        self.rows_per_call = 1 if self.device.type == "cpu" else spec.batch_size
        self._vae_fp32: Any = None  # made once, on first need (see _decode_images)

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
        images, stats, redecoded = self._decode_images(latents)
        hashable = images.shape[1] >= 8 and images.shape[2] >= 9  # dhash64's minimum size
        hashes = [dhash64(images)] if hashable else []  # on the device: only uint8 and [N] values go to the host
        images, nonfinite, mean, std, redecoded, *hashes = self._to_host([images, *stats, redecoded, *hashes])
        hexes = [f"{int(h) & 0xFFFF_FFFF_FFFF_FFFF:016x}" for h in hashes[0]] if hashes else [None] * len(rows)
        ms = (time.perf_counter() - started) * 1000 / len(rows)
        return [
            Rendered(r, images[i], ms, self._is_truncated(r.prompt), bool(redecoded[i]), len(rows),
                     nan_count=int(nonfinite[i]), mean=float(mean[i]), std=float(std[i]), dhash=hexes[i])
            for i, r in enumerate(rows)
        ]  # fmt: skip

    def _control_args(self, rows: list[Row]) -> dict[str, Any]:
        if not self.spec.controlnet:
            return {}
        return {"image": [r.control_image for r in rows], "controlnet_conditioning_scale": self.spec.controlnet_scale}

    def _decode_images(self, latents: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]:
        """VAE decode as the pipeline does it, then post-process and stats in one pass, on the device.

        diffusers upcasts a float16 VAE that needs it (SDXL's, ``force_upcast``) to float32 and
        back on every call. We decode in float16 and, from the NaN/Inf counts the fused
        post-process gives anyway (no extra pass), decode again in float32 (with a float32 copy
        of the VAE made once) only the images that hold NaN or Inf. Each image is post-processed
        in its own decode's dtype, so its pixels do not depend on its batch-mates.

        Returns uint8 NHWC images, (NaN+Inf count, mean, std) of the images finally used, and
        which images were redone.
        """
        vae = self.pipe.vae
        scaled = self._unscale(latents, vae.config)
        decoded = vae.decode(scaled.to(vae.dtype), return_dict=False)[0]
        images, stats = postprocess_with_stats(decoded)
        nonfinite, mean, std = stats.nan + stats.inf, stats.mean, stats.std
        broken = nonfinite > 0
        if vae.dtype == torch.float16 and bool(broken.any()):  # syncs only for float16 VAEs
            if self._vae_fp32 is None:
                self._vae_fp32 = copy.deepcopy(vae).to(torch.float32)
            again = self._vae_fp32.decode(scaled[broken].float(), return_dict=False)[0]
            fixed, fixed_stats = postprocess_with_stats(again)
            images[broken], nonfinite[broken] = fixed, fixed_stats.nan + fixed_stats.inf
            mean[broken], std[broken] = fixed_stats.mean, fixed_stats.std
        else:
            broken = torch.zeros_like(broken)
        return images, (nonfinite, mean, std), broken

    def _to_host(self, tensors: list[torch.Tensor]) -> list[np.ndarray]:
        """Device tensors as numpy. CUDA: async copies into pinned buffers, then one stream sync
        (the arrays stay views of those buffers, so they live as long as the images)."""
        if self.device.type != "cuda":
            return [t.cpu().numpy() for t in tensors]
        host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
        for dst, src in zip(host, tensors):
            dst.copy_(src, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return [h.numpy() for h in host]

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
