"""The UNet families' shared parts (SD 2.1 and SDXL, StableDiffusion(XL)Pipeline and their
ControlNet pipelines): epsilon noise scaled by the scheduler, UNet (+ ControlNet residuals),
classifier-free guidance with the negative half first.

Only the sampling parameters turbo jobs use are supported: no LoRA scale, clip skip, IP-Adapter,
guidance rescale or denoising_end; ControlNet over the whole schedule (start 0, end 1).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from turbobatch.spec.sampling import SamplingParams
from turbobatch.workers.families.base import Conditioning, Family


class UNetFamily(Family):
    def __init__(self, pipe: Any, device: torch.device, controlnet_scale: float = 1.0) -> None:
        super().__init__(pipe, device)
        self.controlnet = getattr(pipe, "controlnet", None)
        self.controlnet_scale = controlnet_scale
        self.guess_mode = bool(self.controlnet is not None and self.controlnet.config.global_pool_conditions)

    def uses_cfg(self, guidance_scale: float) -> bool:
        """The pipelines' ``do_classifier_free_guidance``."""
        return guidance_scale > 1 and self.pipe.unet.config.time_cond_proj_dim is None

    def initial_latents(
        self, p: SamplingParams, generators: list[torch.Generator], scheduler: Any, cond: Conditioning
    ) -> torch.Tensor:
        """``prepare_latents``: one draw per row from its own generator, times the initial sigma."""
        scale = self.pipe.vae_scale_factor
        shape = (len(generators), self.pipe.unet.config.in_channels, p.height // scale, p.width // scale)
        latents = randn_tensor(shape, generator=generators, device=self.device, dtype=cond.embeds.dtype)
        return latents * scheduler.init_noise_sigma

    def predict(
        self, scheduler: Any, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning, p: SamplingParams, cfg: bool
    ) -> torch.Tensor:
        """UNet (after the ControlNet's residuals), then guidance."""
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if cfg else latents, t)
        residuals = self._control_residuals(scheduler, latents, model_input, t, cond, cfg)
        noise = self.pipe.unet(
            model_input,
            t,
            encoder_hidden_states=cond.embeds,
            timestep_cond=None,
            cross_attention_kwargs=None,
            added_cond_kwargs=cond.added,
            return_dict=False,
            **residuals,
        )[0]
        if cfg:
            uncond, text = noise.chunk(2)
            noise = uncond + p.guidance_scale * (text - uncond)
        return noise

    # -- text ------------------------------------------------------------------------------
    def tokens(self, tokenizer: Any, texts: list[str]) -> tuple[torch.Tensor, Any]:
        """Padded, truncated token ids on the device (non-blocking), and the tokenizer output."""
        inputs = tokenizer(
            texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        return self.to_device(inputs.input_ids), inputs

    # -- ControlNet --------------------------------------------------------------------------
    def add_control(self, cond: Conditioning, images: list[Any] | None, p: SamplingParams, cfg: bool) -> None:
        """The pipelines' ``prepare_image``: resized to the render size, [0, 1], NCHW."""
        if self.controlnet is None:
            return
        if images is None:
            raise ValueError("a ControlNet pipeline needs a control image per row")
        tensor = self.pipe.control_image_processor.preprocess(images, height=p.height, width=p.width)
        # contiguous NCHW, as the pipelines' repeat_interleave leaves it (the processor's is a permuted view)
        tensor = self.to_device(tensor.to(torch.float32).contiguous()).to(self.controlnet.dtype)
        cond.extra["control"] = torch.cat([tensor] * 2) if cfg and not self.guess_mode else tensor

    def _control_residuals(
        self,
        scheduler: Any,
        latents: torch.Tensor,
        model_input: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning,
        cfg: bool,
    ) -> dict[str, Any]:
        control = cond.extra.get("control")
        if control is None:
            return {}
        inputs, embeds, added = model_input, cond.embeds, cond.added
        if self.guess_mode and cfg:  # the ControlNet sees only the conditional half
            inputs = scheduler.scale_model_input(latents, t)
            embeds = cond.embeds.chunk(2)[1]
            added = {k: v.chunk(2)[1] for k, v in cond.added.items()} if cond.added else None
        extra = {"added_cond_kwargs": added} if added is not None else {}
        down, mid = self.controlnet(
            inputs,
            t,
            encoder_hidden_states=embeds,
            controlnet_cond=control,
            conditioning_scale=self.controlnet_scale,
            guess_mode=self.guess_mode,
            return_dict=False,
            **extra,
        )
        if self.guess_mode and cfg:
            down = [torch.cat([torch.zeros_like(d), d]) for d in down]
            mid = torch.cat([torch.zeros_like(mid), mid])
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
