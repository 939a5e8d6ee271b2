"""Z-Image (Tongyi-MAI/Z-Image-Turbo, ZImagePipeline): a single-stream DiT over a list of
variable-length captions, flow matching with a size-dependent shift.

What differs from the UNet families:
- text: Qwen3's second-to-last hidden state, each prompt's padding dropped, so the transformer
  gets one caption of its own length per row (it pads them per batch with an attention mask, and
  gives every caption its own RoPE positions: a row's image does not depend on its batch-mates);
- noise: float32 [B, 16, h, w], stepped in float32; the transformer sees one [C, 1, h, w] per row
  and the time as (1000 - t) / 1000; its output is negated (velocity -> the scheduler's sign);
- guidance: on for any scale > 0, positive + scale * (positive - negative) per row;
- schedule: sigmas linspace(1, 1/steps, steps) with the shift ``mu`` of the image's token count;
- img2img (ZImageImg2ImgPipeline): its own start rule (``ceil``-like: ``steps - int(steps - steps
  * strength)`` steps run), the init image encoded and noised in the prompt embeddings' dtype, VAE
  latents shifted then scaled (the inverse of ``vae_input``), ``scale_noise`` at the start sigma.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import torch
from diffusers.pipelines.z_image.pipeline_z_image import calculate_shift, get_default_z_image_sigmas
from diffusers.utils.torch_utils import randn_tensor

from turbobatch.spec.sampling import SamplingParams
from turbobatch.workers.families.base import Conditioning
from turbobatch.workers.families.flow import FlowFamily
from turbobatch.workers.families.qwen import chat_tokens


class ZImage(FlowFamily):
    name = "z-image"

    def uses_cfg(self, guidance_scale: float) -> bool:
        return guidance_scale > 0  # ZImagePipeline.do_classifier_free_guidance

    def schedule_key(self, p: SamplingParams) -> Hashable:
        return (p.steps, *self.latent_size(p))

    def set_timesteps(self, scheduler: Any, p: SamplingParams) -> None:
        h, w = self.latent_size(p)
        config = scheduler.config
        mu = calculate_shift(
            (h // 2) * (w // 2),
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        scheduler.set_timesteps(sigmas=get_default_z_image_sigmas(p.steps), device=self.device, mu=mu)

    # -- text ------------------------------------------------------------------------------
    def encode(self, prompts: list[str], negatives: list[str] | None, p: SamplingParams, cfg: bool) -> Conditioning:
        embeds, truncated = self._captions(prompts)
        negative = self._captions(negatives or [""] * len(prompts))[0] if cfg else None
        return Conditioning(embeds, None, truncated, negative=negative)

    def _captions(self, texts: list[str]) -> tuple[list[torch.Tensor], list[bool]]:
        """``ZImagePipeline._encode_prompt``: hidden_states[-2], each row cut to its own tokens
        (selected with the tokenizer's host mask, so nothing is read back from the device)."""
        tokens = chat_tokens(self.pipe.tokenizer, texts, enable_thinking=True)
        mask = self.to_device(tokens.mask).bool()
        hidden = self.pipe.text_encoder(
            input_ids=self.to_device(tokens.ids), attention_mask=mask, output_hidden_states=True
        ).hidden_states[-2]
        return [self._own_tokens(hidden[i], tokens.mask[i]) for i in range(len(texts))], tokens.truncated

    def _own_tokens(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask.nonzero().squeeze(1)  # host
        if torch.equal(keep, torch.arange(len(keep))):  # right padding: a prefix (a copy, as boolean indexing)
            return hidden[: len(keep)].clone()
        return hidden.index_select(0, self.to_device(keep))

    # -- noise and model ---------------------------------------------------------------------
    def initial_latents(
        self, p: SamplingParams, generators: list[torch.Generator], scheduler: Any, cond: Conditioning
    ) -> torch.Tensor:
        shape = (len(generators), self.pipe.transformer.in_channels, *self.latent_size(p))
        return randn_tensor(shape, generator=generators, device=self.device, dtype=torch.float32)

    def predict(
        self, scheduler: Any, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning, p: SamplingParams, cfg: bool
    ) -> torch.Tensor:
        transformer = self.pipe.transformer
        rows = latents.shape[0]
        timestep = (1000 - t.expand(rows)) / 1000
        model_input = latents.to(transformer.dtype)
        captions = cond.embeds
        if cfg:
            model_input, captions, timestep = (
                model_input.repeat(2, 1, 1, 1),
                captions + cond.negative,
                timestep.repeat(2),
            )
        out = transformer(list(model_input.unsqueeze(2).unbind(dim=0)), timestep, captions, return_dict=False)[0]
        if cfg:
            pos, neg = out[:rows], out[rows:]
            pred = torch.stack([a.float() + p.guidance_scale * (a.float() - b.float()) for a, b in zip(pos, neg)])
        else:
            pred = torch.stack([o.float() for o in out])
        return -pred.squeeze(2)

    # -- img2img -------------------------------------------------------------------------------
    @staticmethod
    def img2img_start(steps: int, strength: float, order: int = 1) -> int:
        """ZImageImg2ImgPipeline.get_timesteps: ``int(max(steps - min(steps * strength, steps), 0))``
        (no ``int`` on ``steps * strength`` as in the UNet pipelines: 4 steps at 0.6 run 3, not 2)."""
        start = int(max(steps - min(steps * strength, steps), 0))
        if steps - start < 1:
            raise ValueError(f"strength {strength} with {steps} steps runs no denoising step")
        return start * order

    def init_dtype(self, cond: Conditioning) -> torch.dtype:
        return cond.embeds[0].dtype  # ``prompt_embeds[0].dtype``: the captions are a list

    def encoded_latents(self, latents: torch.Tensor) -> torch.Tensor:
        config = self.pipe.vae.config
        return (latents - config.shift_factor) * config.scaling_factor

    def vae_input(self, latents: torch.Tensor, vae: Any, dtype: torch.dtype) -> torch.Tensor:
        """``latents / scaling_factor + shift_factor`` in the VAE's dtype, as the pipeline decodes."""
        return latents.to(dtype) / vae.config.scaling_factor + vae.config.shift_factor
