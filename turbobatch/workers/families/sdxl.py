"""SDXL (sdxl-turbo): both CLIP encoders' penultimate hidden states side by side, text_encoder_2's
pooled projection and the size ids (StableDiffusionXLPipeline.encode_prompt and its added
conditioning). Without a negative prompt, guidance uses zeros (``force_zeros_for_empty_prompt``)."""

from __future__ import annotations

from typing import Any

import torch

from turbobatch.spec.sampling import SamplingParams
from turbobatch.workers.families.base import Conditioning
from turbobatch.workers.families.unet import UNetFamily


class SDXL(UNetFamily):
    name = "sdxl"

    def __init__(self, pipe: Any, device: torch.device, controlnet_scale: float = 1.0) -> None:
        super().__init__(pipe, device, controlnet_scale)
        self.time_ids: dict[tuple[int, int, torch.dtype], torch.Tensor] = {}  # size conditioning per size

    def encode(self, prompts: list[str], negatives: list[str] | None, p: SamplingParams, cfg: bool) -> Conditioning:
        pipe = self.pipe
        embeds, pooled = self._hidden(prompts)
        time_ids = self._time_ids(p.height, p.width, embeds.dtype)
        if cfg:
            if negatives is None and pipe.config.force_zeros_for_empty_prompt:
                negative, negative_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
            else:
                negative, negative_pooled = self._hidden(negatives or [""] * len(prompts))
            embeds, pooled = torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])
            time_ids = torch.cat([time_ids, time_ids])
        added = {"text_embeds": pooled, "time_ids": time_ids.repeat(len(prompts), 1)}
        tokenizer = pipe.tokenizer
        return Conditioning(embeds, added, self.truncated(tokenizer, prompts, tokenizer.model_max_length))

    def _hidden(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        pipe = self.pipe
        hidden, pooled = [], None
        for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
            ids, _ = self.tokens(tokenizer, texts)
            out = encoder(ids, output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:  # CLIPTextModelWithProjection: its pooled embedding
                pooled = out[0]
            hidden.append(out.hidden_states[-2])
        return torch.concat(hidden, dim=-1).to(pipe.text_encoder_2.dtype), pooled

    def _time_ids(self, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """(original size, crop top-left, target size) = ((h, w), (0, 0), (h, w)), as the
        pipelines default them; made and moved to the device once per size."""
        key = (height, width, dtype)
        if key not in self.time_ids:
            size = (height, width)
            projection = self.pipe.text_encoder_2.config.projection_dim
            ids = self.pipe._get_add_time_ids(size, (0, 0), size, dtype=dtype, text_encoder_projection_dim=projection)
            self.time_ids[key] = ids.to(self.device)
        return self.time_ids[key]
