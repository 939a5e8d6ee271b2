"""FLOPs per image of a pipeline, counted with torch.utils.flop_counter on the meta device.

Counts one text-encoder pass (both encoders for SDXL), ``steps`` UNet passes and one VAE decode
at the given size, on meta copies of the pipeline's components (built from their configs), so
no memory or compute is spent.

    python -m benchmarks.flops     # the table in docs/BENCHMARKS.md: both models, full VAE vs TAESD
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode


def _meta_copy(module: torch.nn.Module) -> torch.nn.Module:
    with torch.device("meta"):
        if hasattr(module, "from_config"):  # diffusers models
            return type(module).from_config(module.config)
        return type(module)(module.config)  # transformers models


def _count(fn: Any) -> int:
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            fn()
    return counter.get_total_flops()


def flops_per_image(pipe: Any, height: int, width: int, steps: int = 1) -> dict[str, float]:
    unet, vae = _meta_copy(pipe.unet), _meta_copy(pipe.vae)
    encoders = [_meta_copy(e) for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e is not None]
    ids = torch.zeros(1, 77, dtype=torch.long, device="meta")
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    latents = torch.zeros(1, unet.config.in_channels, height // scale, width // scale, device="meta")
    context = torch.zeros(1, 77, unet.config.cross_attention_dim, device="meta")
    extra = {}
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        extra = {
            "added_cond_kwargs": {
                "text_embeds": torch.zeros(1, pooled, device="meta"),
                "time_ids": torch.zeros(1, 6, device="meta"),
            }
        }
    t = torch.tensor([999], device="meta")
    counts = {
        "text_encoders": sum(_count(lambda e=e: e(ids)) for e in encoders),
        "unet": steps * _count(lambda: unet(latents, t, encoder_hidden_states=context, **extra)),
        "vae_decode": _count(lambda: vae.decode(latents)),
    }
    counts["total"] = sum(counts.values())
    return {k: float(v) for k, v in counts.items()}


def main() -> None:
    """FLOPs per 512x512 1-step image of both turbo models, with their VAE and with a TAESD decoder."""
    from types import SimpleNamespace

    from turbobatch.models.random_weights import RANDOM_MODELS, build_components, tiny_autoencoder

    print("| model | decoder | text encoders | UNet | decode | total |\n|---|---|---|---|---|---|")
    for model in RANDOM_MODELS:
        parts = build_components(model, device="meta")
        with torch.device("meta"):
            taesd = tiny_autoencoder(parts["vae"].config.latent_channels)
        for decoder, vae in (("VAE (AutoencoderKL)", parts["vae"]), ("TAESD (AutoencoderTiny)", taesd)):
            f = flops_per_image(SimpleNamespace(**{**parts, "vae": vae}), 512, 512)
            cells = " | ".join(f"{f[k] / 1e12:.3f} TFLOP" for k in ("text_encoders", "unet", "vae_decode", "total"))
            print(f"| {model.split('/')[1]} | {decoder} | {cells} |")


if __name__ == "__main__":
    main()
