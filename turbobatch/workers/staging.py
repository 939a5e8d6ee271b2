"""Per-shard staging, for a card too small for the whole pipeline at once.

Z-Image-Turbo's weights are 20.5 GB in bf16 (Qwen3-4B 8.0 of them): on a 24 GB card they load, but
the transformer's activations at 1024x1024 do not fit beside the text encoder. A batch job need
not keep both busy at once: the renderer encodes every prompt of the shard first (the embeddings
wait in host memory: FLUX.2 klein's are 7.9 MB per prompt), moves the text encoder to host
memory, then denoises and decodes over the cached embeddings. The same batches are encoded by the
same function either way, so the images are byte-identical with and without staging.

Staging is decided once per worker from ``torch.cuda.mem_get_info`` and the components' sizes
(``staging_reason``). ``TURBOBATCH_STAGE`` is a private hook, not a user option: ``1`` forces
staging (the CPU tests, a GPU benchmark of the swap's cost), ``0`` forbids it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch

STAGE_ENV = "TURBOBATCH_STAGE"
# What one batch of the transformer needs beyond the weights at 1024x1024 in bf16: an assumption,
# not measured yet (docs/BENCHMARKS.md lists it among the GPU measurements still missing).
ACTIVATION_RESERVE = 6 * 2**30


def module_bytes(module: Any) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters()) if module is not None else 0


def staging_reason(pipe: Any, device: str | torch.device) -> str | None:
    """Why this worker stages its shards, or None. Only the transformer families (a text encoder
    worth freeing: Qwen3-4B) stage on their own, and only when the card's memory for the pipeline
    (free now + what the pipeline already holds there) is below all weights + ACTIVATION_RESERVE."""
    forced = os.environ.get(STAGE_ENV)
    if forced in ("0", "1"):
        return f"forced by {STAGE_ENV}=1" if forced == "1" else None
    encoder, device = getattr(pipe, "text_encoder", None), torch.device(device)
    if device.type != "cuda" or getattr(pipe, "transformer", None) is None or encoder is None:
        return None
    parts = [getattr(pipe, name, None) for name in ("text_encoder", "transformer", "vae")]
    weights = sum(module_bytes(m) for m in parts)
    on_card = sum(module_bytes(m) for m in parts if m is not None and m.device.type == "cuda")
    free, _ = torch.cuda.mem_get_info(device)
    if free + on_card >= weights + ACTIVATION_RESERVE:
        return None
    return (
        f"{(free + on_card) / 2**30:.1f} GiB for the pipeline on this card, {weights / 2**30:.1f} GiB of weights "
        f"+ {ACTIVATION_RESERVE / 2**30:.0f} GiB for a batch: prompts are encoded per shard first, then the text "
        f"encoder ({module_bytes(encoder) / 2**30:.1f} GiB) waits in host memory while the transformer runs"
    )


class Stager:
    """Moves the text encoder between the device and host memory, and embeddings to and from it."""

    def __init__(self, pipe: Any, device: str | torch.device) -> None:
        self.encoder, self.device = pipe.text_encoder, torch.device(device)

    def encoder_to_device(self) -> None:
        self.encoder.to(self.device)

    def encoder_away(self) -> None:
        self.encoder.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def moved(value: Any, device: torch.device | str) -> Any:
    """A Conditioning (or any nest of tensors, lists, dicts and dataclasses in it) on ``device``;
    copies are exact, so embeddings come back bit for bit."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=torch.device(device).type == "cuda")
    if isinstance(value, list | tuple):
        return type(value)(moved(v, device) for v in value)
    if isinstance(value, dict):
        return {k: moved(v, device) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(
            value, **{f.name: moved(getattr(value, f.name), device) for f in dataclasses.fields(value)}
        )
    return value
