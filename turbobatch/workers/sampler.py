"""Sample one batch's latents: text encoders, per-row noise, UNet (+ ControlNet), scheduler steps.

This is what diffusers' ``__call__`` of StableDiffusion(XL)Pipeline and their ControlNet
pipelines computes for ``output_type="latent"`` — same models, same order, same dtypes, same
random draws from each row's ``torch.Generator`` — written out so that a batch runs from
prompt to latents with no host synchronisation (tests/unit/workers/test_sampler.py checks the
images against the pipelines' for every family and 1-4 steps):

- the scheduler's timesteps and sigmas are made once per worker and step count
  (``set_timesteps`` copies them between host and device); each batch steps a shallow copy with
  ``set_begin_index(0)``, so no step looks its index up with ``.nonzero().item()``;
- host tensors (token ids, control images) go to the device from pinned memory without
  blocking; SDXL's size conditioning is made once per size;
- nothing reads a device value back.

A batch samples with one ``SamplingParams`` (steps, guidance scale, height, width): the job's by
default, or the batch's own when images of a job differ in them (sweeps, per-row columns; the
renderer never mixes two in one call).

Only the sampling parameters turbo jobs use are supported: no LoRA scale, clip skip, IP-Adapter,
guidance rescale or denoising_end; ControlNet over the whole schedule (start 0, end 1).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from turbobatch.spec.job import JobSpec
from turbobatch.spec.sampling import SamplingParams
from turbobatch.workers.img2img import InitLatents


@dataclass
class Conditioning:
    """Text conditioning of a batch, negative half first when guidance is on (as the pipelines)."""

    embeds: torch.Tensor  # [B or 2B, tokens, width]
    added: dict[str, torch.Tensor] | None  # SDXL: pooled text embeds and size ids
    truncated: list[bool]  # prompt longer than the tokenizer's limit (rendered cut off)


class TurboSampler:
    """Latents for a batch of prompts and seeds, as the model's pipeline makes them."""

    def __init__(self, pipe: Any, spec: JobSpec, device: str | torch.device) -> None:
        self.pipe = pipe
        self.device = torch.device(device)
        self.sdxl = getattr(pipe, "text_encoder_2", None) is not None
        self.controlnet = getattr(pipe, "controlnet", None)
        self.params = spec.sampling()  # a batch without its own parameters samples with the job's
        self.controlnet_scale = spec.controlnet_scale
        self.guess_mode = bool(self.controlnet is not None and self.controlnet.config.global_pool_conditions)
        self._schedulers: dict[int, Any] = {}  # step count -> the scheduler with its timesteps set
        self._accepts_generator = "generator" in _parameters(pipe.scheduler.step)
        self._time_ids: dict[tuple[int, int, torch.dtype], torch.Tensor] = {}  # SDXL size conditioning per size
        self.init_latents = InitLatents(pipe)  # img2img: workers/img2img.py
        self._scheduler_for(self.params.steps)  # the job's own, made before the first batch

    def uses_cfg(self, guidance_scale: float) -> bool:
        """The pipelines' ``do_classifier_free_guidance``."""
        return guidance_scale > 1 and self.pipe.unet.config.time_cond_proj_dim is None

    @torch.inference_mode()
    def sample(
        self,
        prompts: list[str],
        negatives: list[str] | None,
        seeds: list[int],
        control_images: list[Any] | None = None,
        params: SamplingParams | None = None,
        init_images: list[Any] | None = None,
        strength: float | None = None,
    ) -> tuple[torch.Tensor, list[bool]]:
        """Latents [B, C, h, w] of the batch (on the device, still queued there) and which
        prompts were truncated. ``params``: the batch's (default: the job's). ``init_images``
        (img2img, at the render size) start the rows from those images noised to ``strength``."""
        p = params or self.params
        cfg = self.uses_cfg(p.guidance_scale)
        # 1. Text encoders (tokenizing is the host's part of the batch).
        cond = self._encode_sdxl(prompts, negatives, p, cfg) if self.sdxl else self._encode_sd(prompts, negatives, cfg)
        # 2. Noise, one generator per row: row i's noise does not depend on its batch-mates.
        generators = [torch.Generator(self.device).manual_seed(seed) for seed in seeds]
        scheduler = copy.copy(self._scheduler_for(p.steps))
        scheduler.set_begin_index(0)
        unet = self.pipe.unet
        shape = (
            len(prompts),
            unet.config.in_channels,
            p.height // self.pipe.vae_scale_factor,
            p.width // self.pipe.vae_scale_factor,
        )
        if init_images is None:
            latents = randn_tensor(shape, generator=generators, device=self.device, dtype=cond.embeds.dtype)
            latents, timesteps = latents * scheduler.init_noise_sigma, scheduler.timesteps
        else:
            latents, timesteps = self.init_latents.start(
                scheduler, init_images, strength, p.steps, generators, cond.embeds.dtype, self._to_device
            )
        control = self._control_input(control_images, p, cfg) if self.controlnet is not None else None
        step_kwargs = {"generator": generators} if self._accepts_generator else {}
        # 3. Denoising steps: UNet (after the ControlNet's residuals), guidance, scheduler step.
        for t in timesteps:
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if cfg else latents, t)
            residuals = self._control_residuals(scheduler, latents, model_input, t, cond, control, cfg)
            noise = unet(
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
            latents = scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
        return latents, cond.truncated

    def _scheduler_for(self, steps: int) -> Any:
        """The scheduler with ``steps`` timesteps on the device, made once per step count
        (``set_timesteps`` moves them between host and device: never in a batch's hot path twice)."""
        if steps not in self._schedulers:
            scheduler = copy.deepcopy(self.pipe.scheduler)  # the pipeline's own stays untouched
            scheduler.set_timesteps(steps, device=self.device)
            self._schedulers[steps] = scheduler
        return self._schedulers[steps]

    # -- text ----------------------------------------------------------------------------
    def _tokens(self, tokenizer: Any, texts: list[str]) -> tuple[torch.Tensor, Any]:
        """Padded, truncated token ids on the device (non-blocking), and the tokenizer output."""
        inputs = tokenizer(
            texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        return self._to_device(inputs.input_ids), inputs

    def _truncated(self, tokenizer: Any, prompts: list[str]) -> list[bool]:
        lengths = tokenizer(prompts, truncation=False, verbose=False).input_ids
        return [len(ids) > tokenizer.model_max_length for ids in lengths]

    def _encode_sd(self, prompts: list[str], negatives: list[str] | None, cfg: bool) -> Conditioning:
        """StableDiffusionPipeline.encode_prompt: the last hidden state of the text encoder."""
        embeds = self._sd_hidden(prompts)
        if cfg:
            negative = self._sd_hidden(negatives if negatives is not None else [""] * len(prompts))
            embeds = torch.cat([negative, embeds])
        return Conditioning(embeds, None, self._truncated(self.pipe.tokenizer, prompts))

    def _sd_hidden(self, texts: list[str]) -> torch.Tensor:
        encoder = self.pipe.text_encoder
        ids, inputs = self._tokens(self.pipe.tokenizer, texts)
        mask = None
        if getattr(encoder.config, "use_attention_mask", False):
            mask = self._to_device(inputs.attention_mask)
        return encoder(ids, attention_mask=mask)[0].to(encoder.dtype)

    def _encode_sdxl(
        self, prompts: list[str], negatives: list[str] | None, p: SamplingParams, cfg: bool
    ) -> Conditioning:
        """StableDiffusionXLPipeline.encode_prompt and its added conditioning: both encoders'
        penultimate hidden states side by side, text_encoder_2's pooled projection, size ids.
        Without a negative prompt, guidance uses zeros (``force_zeros_for_empty_prompt``)."""
        pipe = self.pipe
        embeds, pooled = self._sdxl_hidden(prompts)
        time_ids = self._sdxl_time_ids(p.height, p.width, embeds.dtype)
        if cfg:
            if negatives is None and pipe.config.force_zeros_for_empty_prompt:
                negative, negative_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
            else:
                negative, negative_pooled = self._sdxl_hidden(negatives or [""] * len(prompts))
            embeds, pooled = torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])
            time_ids = torch.cat([time_ids, time_ids])
        added = {"text_embeds": pooled, "time_ids": time_ids.repeat(len(prompts), 1)}
        return Conditioning(embeds, added, self._truncated(pipe.tokenizer, prompts))

    def _sdxl_hidden(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        pipe = self.pipe
        hidden, pooled = [], None
        for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
            ids, _ = self._tokens(tokenizer, texts)
            out = encoder(ids, output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:  # CLIPTextModelWithProjection: its pooled embedding
                pooled = out[0]
            hidden.append(out.hidden_states[-2])
        dtype = pipe.text_encoder_2.dtype
        return torch.concat(hidden, dim=-1).to(dtype), pooled

    def _sdxl_time_ids(self, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """(original size, crop top-left, target size) = ((h, w), (0, 0), (h, w)), as the
        pipelines default them; made and moved to the device once per size."""
        key = (height, width, dtype)
        if key not in self._time_ids:
            size = (height, width)
            projection = self.pipe.text_encoder_2.config.projection_dim
            ids = self.pipe._get_add_time_ids(size, (0, 0), size, dtype=dtype, text_encoder_projection_dim=projection)
            self._time_ids[key] = ids.to(self.device)
        return self._time_ids[key]

    # -- ControlNet ----------------------------------------------------------------------
    def _control_input(self, images: list[Any] | None, p: SamplingParams, cfg: bool) -> torch.Tensor:
        """The pipelines' ``prepare_image``: resized to the render size, [0, 1], NCHW."""
        if images is None:
            raise ValueError("a ControlNet pipeline needs a control image per row")
        tensor = self.pipe.control_image_processor.preprocess(images, height=p.height, width=p.width)
        # contiguous NCHW, as the pipelines' repeat_interleave leaves it (the processor's is a permuted view)
        tensor = self._to_device(tensor.to(torch.float32).contiguous()).to(self.controlnet.dtype)
        return torch.cat([tensor] * 2) if cfg and not self.guess_mode else tensor

    def _control_residuals(
        self,
        scheduler: Any,
        latents: torch.Tensor,
        model_input: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning,
        control: torch.Tensor | None,
        cfg: bool,
    ) -> dict[str, Any]:
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

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A host tensor on the device; on CUDA through pinned memory, so the copy does not wait
        for the work already queued (a pageable copy would synchronise the host)."""
        if self.device.type != "cuda":
            return tensor.to(self.device)
        return tensor.pin_memory().to(self.device, non_blocking=True)


def _parameters(fn: Any) -> set[str]:
    import inspect

    return set(inspect.signature(fn).parameters)
