"""SD 2.1 (sd-turbo): StableDiffusionPipeline.encode_prompt, the text encoder's last hidden state."""

from __future__ import annotations

import torch

from turbobatch.spec.sampling import SamplingParams
from turbobatch.workers.families.base import Conditioning
from turbobatch.workers.families.unet import UNetFamily


class SD(UNetFamily):
    name = "sd"

    def encode(self, prompts: list[str], negatives: list[str] | None, p: SamplingParams, cfg: bool) -> Conditioning:
        embeds = self._hidden(prompts)
        if cfg:
            negative = self._hidden(negatives if negatives is not None else [""] * len(prompts))
            embeds = torch.cat([negative, embeds])
        tokenizer = self.pipe.tokenizer
        return Conditioning(embeds, None, self.truncated(tokenizer, prompts, tokenizer.model_max_length))

    def _hidden(self, texts: list[str]) -> torch.Tensor:
        encoder = self.pipe.text_encoder
        ids, inputs = self.tokens(self.pipe.tokenizer, texts)
        mask = None
        if getattr(encoder.config, "use_attention_mask", False):
            mask = self.to_device(inputs.attention_mask)
        return encoder(ids, attention_mask=mask)[0].to(encoder.dtype)
