"""img2img's parts of the one sampler (workers/sampler.py): find the start step, encode the init
images, noise the init latents. Each is what the family's diffusers img2img pipeline
(StableDiffusionImg2Img, StableDiffusionXLImg2Img, ZImageImg2Img) computes, so an image is within
1 level of theirs; where the families differ, the family object says how (workers/families/):

- ``family.img2img_start``: the pipeline's ``get_timesteps``, the index of the first timestep
  run, which is also the scheduler's begin index (so the noising and every step find their sigma
  without a ``.nonzero().item()`` sync);
- ``encode``: ``image_processor.preprocess`` (the image is already at the render size:
  workers/init_images.py), then the VAE encoder; the latent distribution is sampled with each
  row's own generator, as the pipelines' per-row ``vae.encode(image[i:i+1])`` do (one batched
  encode here; the draws are the same), then ``family.encoded_latents`` (scale, shift, mean/std);
- ``noise``: one draw per row from the same generator, after the encoder's, then
  ``family.noised`` at the start timestep (``add_noise``; flow families: ``scale_noise``).

The random draws happen in the pipelines' order (encoder sample, noise, then the steps' own),
so each row's generator yields the same numbers as in a plain diffusers call.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from turbobatch.workers.families import Family

# Families whose img2img pipeline encodes in float32 when the VAE says ``force_upcast``
# (StableDiffusionXLImg2ImgPipeline.prepare_latents); SD's and Z-Image's encode in the latents' dtype.
UPCAST_ENCODE = ("StableDiffusionXLPipeline",)


class InitLatents:
    """Start latents from init images for one pipeline; holds a float32 copy of the VAE when the
    family encodes upcast and the VAE is in half precision (made once, not per batch)."""

    def __init__(self, pipe: Any, family: Family) -> None:
        self.pipe = pipe
        self.family = family
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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(noised start latents, the timesteps still to run). ``scheduler``: the batch's copy with
        ``steps`` timesteps set; its begin index is set here. ``dtype``: ``family.init_dtype``."""
        start = self.family.img2img_start(steps, strength, scheduler.order)
        scheduler.set_begin_index(start)
        timesteps = scheduler.timesteps[start:]
        init = self.encode(images, generators, dtype)
        noise = randn_tensor(init.shape, generator=generators, device=init.device, dtype=dtype)
        return self.family.noised(scheduler, init, noise, timesteps[:1].repeat(len(images))), timesteps

    def encode(self, images: list[Any], generators: list[torch.Generator], dtype: torch.dtype) -> torch.Tensor:
        """Init latents [B, C, h, w] in ``dtype``, in the denoiser's space, sampled with each row's generator."""
        vae = self._encoder()
        pixels = self.pipe.image_processor.preprocess(images)
        # the processor's layout as it is (a permuted view): the pipelines encode that, bit for bit
        pixels = self.family.to_device(pixels.to(torch.float32)).to(vae.dtype if self.upcast else dtype)
        out = vae.encode(pixels)
        if hasattr(out, "latent_dist"):
            latents = out.latent_dist.sample(generator=generators)
        else:  # AutoencoderTiny: deterministic latents
            latents = out.latents
        return self.family.encoded_latents(latents.to(dtype))

    def _encoder(self) -> Any:
        vae = self.pipe.vae
        if not self.upcast or vae.dtype == torch.float32:
            return vae
        if self._vae32 is None:
            self._vae32 = copy.deepcopy(vae).to(torch.float32)
        return self._vae32
