"""Latents -> uint8 images on the device: VAE decode, post-process, stats and hash in one go.

diffusers upcasts a float16 VAE that asks for it (SDXL's, ``force_upcast``) to float32 and back
on every call. We decode in the VAE's dtype; the fused post-process counts NaN/Inf per image
anyway, and the renderer decodes again in float32 (``redecode_fp32``, with a float32 copy of the
VAE made once) only the images whose count is not zero — after the batch's results reached the
host, so no check stalls the batch. Each image is post-processed in its own decode's dtype, so
its pixels do not depend on its batch-mates.

Latents reach the VAE through the model family's ``vae_input`` where it has one (Z-Image: scaling
and shift factors; FLUX.2: the VAE's batch-norm statistics and the 2x2 unpatchify), else through
the scaling factor (and SDXL-style latents mean/std) here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from turbobatch.kernels import dhash64, postprocess_with_stats
from turbobatch.workers.families import Family, family_for


@dataclass
class Decoded:
    """One batch's results, still on the device: what the host needs, nothing larger."""

    images: torch.Tensor  # uint8 [B, H, W, 3]
    nonfinite: torch.Tensor  # int64 [B]: NaN + Inf values in the float decode
    mean: torch.Tensor  # float64 [B], of the uint8 image
    std: torch.Tensor  # float64 [B]
    hashes: torch.Tensor | None  # int64 [B] dhash64, None when the images are below 8x9

    def tensors(self) -> list[torch.Tensor]:
        return [self.images, self.nonfinite, self.mean, self.std, *([self.hashes] if self.hashes is not None else [])]


class Decoder:
    """Decodes with the pipeline's current VAE (benchmarks swap it after the worker is built)."""

    def __init__(self, pipe: Any, family: Family | None = None) -> None:
        self.pipe = pipe
        self.family = family or family_for(pipe, "cpu")  # only its vae_input is used here
        self._fp32: tuple[Any, Any] | None = None  # (VAE, its float32 copy), made on first need
        self._mean_std: tuple[Any, torch.Tensor, torch.Tensor] | None = None  # SDXL-style latent stats

    @property
    def vae(self) -> Any:
        return self.pipe.vae

    @property
    def may_need_fp32(self) -> bool:
        """float16 VAEs overflow on some latents (SDXL's does); others are decoded once."""
        return self.vae.dtype == torch.float16

    def decode(self, latents: torch.Tensor) -> Decoded:
        """Unscale, decode in the VAE's dtype, post-process, stats and hash: all queued, no sync."""
        return self._decode(self.vae, self.vae_input(latents, self.vae.dtype))

    def redecode_fp32(self, latents: torch.Tensor) -> Decoded:
        """The same in float32 (for the images whose float16 decode held NaN or Inf)."""
        if self._fp32 is None or self._fp32[0] is not self.vae:
            self._fp32 = (self.vae, copy.deepcopy(self.vae).to(torch.float32))
        return self._decode(self._fp32[1], self.vae_input(latents, torch.float32))

    @property
    def fp32_copy(self) -> Any:
        """The float32 VAE copy, None until an image needed it."""
        return self._fp32[1] if self._fp32 else None

    @staticmethod
    def _decode(vae: Any, scaled: torch.Tensor) -> Decoded:
        decoded = vae.decode(scaled, return_dict=False)[0]
        images, stats = postprocess_with_stats(decoded)
        hashable = images.shape[1] >= 8 and images.shape[2] >= 9  # dhash64's minimum size
        return Decoded(images, stats.nan + stats.inf, stats.mean, stats.std, dhash64(images) if hashable else None)

    def vae_input(self, latents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """What ``vae.decode`` takes, in ``dtype``: the family's own transform, else ``unscale``."""
        own = self.family.vae_input(latents, self.vae, dtype)
        return own if own is not None else self.unscale(latents).to(dtype)

    def unscale(self, latents: torch.Tensor) -> torch.Tensor:
        """Undo the VAE's latent scaling (and SDXL-style mean/std when the VAE config has them)."""
        config = self.vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is None or std is None:
            return latents / config.scaling_factor
        key = (id(self.vae), latents.device, latents.dtype)
        if self._mean_std is None or self._mean_std[0] != key:  # copied to the device once, not per batch
            as_tensor = [torch.tensor(v).view(1, -1, 1, 1).to(latents.device, latents.dtype) for v in (mean, std)]
            self._mean_std = (key, *as_tensor)
        _, mean_t, std_t = self._mean_std
        return latents * std_t / config.scaling_factor + mean_t
