"""Prompts through a Qwen3 chat template, as Z-Image and FLUX.2 klein tokenize them: each prompt
is one user message with the generation prompt appended, padded to ``max_length`` (512) tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

MAX_SEQUENCE_LENGTH = 512  # both pipelines' default max_sequence_length


@dataclass
class ChatTokens:
    ids: torch.Tensor  # int64 [B, max_length], on the host
    mask: torch.Tensor  # int64 [B, max_length], on the host
    truncated: list[bool]  # the templated prompt had more tokens than max_length


def chat_tokens(
    tokenizer: Any, prompts: list[str], enable_thinking: bool, max_length: int = MAX_SEQUENCE_LENGTH
) -> ChatTokens:
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=enable_thinking,
        )
        for prompt in prompts
    ]
    inputs = tokenizer(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    full = tokenizer(texts, truncation=False, verbose=False).input_ids
    return ChatTokens(inputs.input_ids, inputs.attention_mask, [len(ids) > max_length for ids in full])
