"""FLUX.2 klein (black-forest-labs/FLUX.2-klein-4B, Flux2KleinPipeline): a double- and
single-stream DiT over packed 2x2-patchified latents, conditioned on three Qwen3 layers.

What differs from the UNet families:
- text: hidden states 9, 18 and 27 of Qwen3 (all 512 positions, padding included, as the
  pipeline passes them) stacked along the width; no negative prompt (the pipeline takes none);
- noise: [B, 4C, h/2, w/2] in the text embeddings' dtype, packed to [B, h*w/4, 4C] tokens; the
  transformer gets the time as t / 1000 and position ids that are the same for every row (it
  reads the first row's only), made once per size;
- guidance: only for the undistilled base model (``is_distilled`` False) and scale > 1: a second
  call with the empty prompt, negative + scale * (positive - negative);
- schedule: sigmas linspace(1, 1/steps, steps), shift ``compute_empirical_mu`` of size and steps;
- decode: tokens back to [B, 4C, h/2, w/2] here; the VAE's batch-norm statistics and the 2x2
  unpatchify in ``vae_input`` (the pipeline's last lines before ``vae.decode``);
- no img2img: diffusers has no img2img pipeline for klein (``image=`` of Flux2KleinPipeline is
  reference conditioning; models/img2img.py refuses such jobs on the driver).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.flux2.pipeline_flux2_klein import Flux2KleinPipeline, compute_empirical_mu
from diffusers.utils.torch_utils import randn_tensor

from turbobatch.spec.sampling import SamplingParams
from turbobatch.workers.families.base import Conditioning
from turbobatch.workers.families.flow import FlowFamily
from turbobatch.workers.families.qwen import chat_tokens

NO_IMG2IMG = "Flux2KleinPipeline's image= is reference conditioning, Flux2KleinInpaintPipeline needs a mask"
TEXT_LAYERS = (9, 18, 27)  # Flux2KleinPipeline's text_encoder_out_layers


class Flux2Klein(FlowFamily):
    name = "flux2-klein"

    def __init__(self, pipe: Any, device: torch.device) -> None:
        super().__init__(pipe, device)
        self.ids: dict[tuple[int, ...], torch.Tensor] = {}  # position ids per text length / latent size

    def uses_cfg(self, guidance_scale: float) -> bool:
        return guidance_scale > 1 and not self.pipe.config.is_distilled

    def schedule_key(self, p: SamplingParams) -> Hashable:
        return (p.steps, *self.latent_size(p))

    def set_timesteps(self, scheduler: Any, p: SamplingParams) -> None:
        h, w = self.latent_size(p)
        sigmas = np.linspace(1.0, 1 / p.steps, p.steps)
        if getattr(scheduler.config, "use_flow_sigmas", False):
            sigmas = None
        mu = compute_empirical_mu(image_seq_len=(h // 2) * (w // 2), num_steps=p.steps)
        scheduler.set_timesteps(sigmas=sigmas, device=self.device, mu=mu)

    # -- text ------------------------------------------------------------------------------
    def encode(self, prompts: list[str], negatives: list[str] | None, p: SamplingParams, cfg: bool) -> Conditioning:
        if negatives is not None:
            raise ValueError("FLUX.2 klein takes no negative prompt")
        embeds, truncated = self._embeds(prompts)
        negative = self._embeds([""] * len(prompts))[0] if cfg else None
        return Conditioning(embeds, None, truncated, negative=negative)

    def _embeds(self, texts: list[str]) -> tuple[torch.Tensor, list[bool]]:
        """``Flux2KleinPipeline._get_qwen3_prompt_embeds``."""
        encoder = self.pipe.text_encoder
        tokens = chat_tokens(self.pipe.tokenizer, texts, enable_thinking=False)
        out = encoder(
            input_ids=self.to_device(tokens.ids),
            attention_mask=self.to_device(tokens.mask),
            output_hidden_states=True,
            use_cache=False,
        )
        stacked = torch.stack([out.hidden_states[k] for k in TEXT_LAYERS], dim=1).to(dtype=encoder.dtype)
        rows, layers, length, width = stacked.shape
        return stacked.permute(0, 2, 1, 3).reshape(rows, length, layers * width), tokens.truncated

    def _ids(self, key: tuple[int, ...], make: Any) -> torch.Tensor:
        if key not in self.ids:
            self.ids[key] = make().to(self.device)
        return self.ids[key]

    # -- noise and model ---------------------------------------------------------------------
    def initial_latents(
        self, p: SamplingParams, generators: list[torch.Generator], scheduler: Any, cond: Conditioning
    ) -> torch.Tensor:
        h, w = self.latent_size(p)
        shape = (len(generators), self.pipe.transformer.config.in_channels, h // 2, w // 2)
        latents = randn_tensor(shape, generator=generators, device=self.device, dtype=cond.embeds.dtype)
        return Flux2KleinPipeline._pack_latents(latents)

    def predict(
        self, scheduler: Any, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning, p: SamplingParams, cfg: bool
    ) -> torch.Tensor:
        h, w = self.latent_size(p)
        img_ids = self._ids(("img", h // 2, w // 2), lambda: _grid(h // 2, w // 2))
        txt_ids = self._ids(("txt", cond.embeds.shape[1]), lambda: _line(cond.embeds.shape[1]))
        timestep = t.expand(latents.shape[0]).to(latents.dtype) / 1000
        model_input = latents.to(self.pipe.transformer.dtype)

        def call(embeds: torch.Tensor) -> torch.Tensor:
            out = self.pipe.transformer(
                hidden_states=model_input,
                timestep=timestep,
                guidance=None,
                encoder_hidden_states=embeds,
                txt_ids=txt_ids,
                img_ids=img_ids,
                return_dict=False,
            )[0]
            return out[:, : latents.size(1) :]

        noise = call(cond.embeds)
        if cfg:
            negative = call(cond.negative)
            noise = negative + p.guidance_scale * (noise - negative)
        return noise

    @staticmethod
    def img2img_start(steps: int, strength: float, order: int = 1) -> int:
        raise ValueError(f"FLUX.2 klein has no img2img pipeline in diffusers ({NO_IMG2IMG})")

    def finish(self, latents: torch.Tensor, p: SamplingParams) -> torch.Tensor:
        """Tokens [B, h*w, C] back to [B, C, h, w] (the pipeline scatters by its raster-order ids)."""
        h, w = self.latent_size(p)
        return latents.permute(0, 2, 1).reshape(latents.shape[0], latents.shape[2], h // 2, w // 2)

    def vae_input(self, latents: torch.Tensor, vae: Any, dtype: torch.dtype) -> torch.Tensor:
        latents = latents.to(dtype)
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(
            latents.device, latents.dtype
        )
        return Flux2KleinPipeline._unpatchify_latents(latents * std + mean)


def _grid(h: int, w: int) -> torch.Tensor:
    """(T, H, W, L) ids of an h x w latent, raster order (``_prepare_latent_ids`` of one row)."""
    return torch.cartesian_prod(torch.arange(1), torch.arange(h), torch.arange(w), torch.arange(1))


def _line(length: int) -> torch.Tensor:
    """(T, H, W, L) ids of a text of ``length`` tokens (``_prepare_text_ids`` of one row)."""
    return torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(length))
