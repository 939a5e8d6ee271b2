"""img2img's parts of the one sampler (workers/sampler.py): encode the init images, find the start
step, noise the init latents. Each is what diffusers' img2img pipelines (StableDiffusionImg2Img,
StableDiffusionXLImg2Img) compute, so an image is within 1 level of theirs:

- ``start_index``: ``get_timesteps``: ``int(steps * strength)`` steps run, from index
  ``(steps - that) * order`` of the full schedule, which is also the scheduler's begin index
  (so ``add_noise`` and every step find their sigma without a ``.nonzero().item()`` sync);
- ``encode``: ``image_processor.preprocess`` (the image is already at the render size:
  workers/init_images.py), then the VAE encoder; the latent distribution is sampled with each
  row's own generator, as the pipelines' per-row ``vae.encode(image[i:i+1])`` do (one batched
  encode here; the draws are the same), then scaled (with the VAE's latents mean/std if it has
  them, as SDXL's pipeline does);
- ``noise``: one draw per row from the same generator, after the encoder's, then
  ``scheduler.add_noise`` at the start timestep.

The random draws happen in the pipelines' order (encoder sample, noise, then the steps' own),
so each row's generator yields the same numbers as in a plain diffusers call.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from turbobatch.spec.job import denoising_steps

# Families whose img2img pipeline encodes in float32 when the VAE says ``force_upcast``
# (StableDiffusionXLImg2ImgPipeline.prepare_latents); SD's pipeline encodes in the VAE's dtype.
UPCAST_ENCODE = ("StableDiffusionXLPipeline",)


def start_index(steps: int, strength: float, order: int = 1) -> int:
    """Index of the first timestep an img2img call runs (diffusers' ``get_timesteps``); ValueError
    when no step would run (the driver refuses such jobs; a per-row value fails its batch)."""
    runs = denoising_steps(steps, strength)
    if runs < 1:
        raise ValueError(f"strength {strength} with {steps} steps runs no denoising step (steps * strength < 1)")
    return (steps - runs) * order


class InitLatents:
    """Start latents from init images for one pipeline; holds a float32 copy of the VAE when the
    family encodes upcast and the VAE is in half precision (made once, not per batch)."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.upcast = type(pipe).__name__ in UPCAST_ENCODE and bool(getattr(pipe.vae.config, "force_upcast", False))
        self._vae32: Any = None

    def start(
        self,
        scheduler: Any,
        images: list[Any],
        strength: float,
        steps: int,
        generators: list[torch.Generator],
        dtype: torch.dtype,
        to_device: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(noised start latents, the timesteps still to run). ``scheduler``: the batch's copy with
        ``steps`` timesteps set; its begin index is set here."""
        start = start_index(steps, strength, scheduler.order)
        scheduler.set_begin_index(start)
        timesteps = scheduler.timesteps[start:]
        init = self.encode(images, generators, dtype, to_device)
        noise = randn_tensor(init.shape, generator=generators, device=init.device, dtype=dtype)
        return scheduler.add_noise(init, noise, timesteps[:1].repeat(len(images))), timesteps

    def encode(
        self, images: list[Any], generators: list[torch.Generator], dtype: torch.dtype, to_device: Any
    ) -> torch.Tensor:
        """Scaled init latents [B, C, h, w] in ``dtype``, sampled with each row's generator."""
        vae = self._encoder()
        pixels = self.pipe.image_processor.preprocess(images)
        # the processor's layout as it is (a permuted view): the pipelines encode that, bit for bit
        pixels = to_device(pixels.to(torch.float32)).to(vae.dtype if self.upcast else dtype)
        out = vae.encode(pixels)
        if hasattr(out, "latent_dist"):
            latents = out.latent_dist.sample(generator=generators)
        else:  # AutoencoderTiny: deterministic latents
            latents = out.latents
        latents = latents.to(dtype)
        config = self.pipe.vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            channels = latents.shape[1]
            mean = torch.tensor(mean).view(1, channels, 1, 1).to(latents.device, dtype)
            std = torch.tensor(std).view(1, channels, 1, 1).to(latents.device, dtype)
            return (latents - mean) * config.scaling_factor / std
        return config.scaling_factor * latents

    def _encoder(self) -> Any:
        vae = self.pipe.vae
        if not self.upcast or vae.dtype == torch.float32:
            return vae
        if self._vae32 is None:
            self._vae32 = copy.deepcopy(vae).to(torch.float32)
        return self._vae32
