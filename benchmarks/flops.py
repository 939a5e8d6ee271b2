"""FLOPs per image of a pipeline, counted with torch.utils.flop_counter on the meta device.

Counts one text-encoder pass per prompt (both encoders for SDXL), ``steps`` denoiser passes (UNet
or transformer; twice each with classifier-free guidance, ``cfg``) and one VAE decode at the given
size, on meta copies of the pipeline's components (built from their configs), so no memory or
compute is spent.

The transformer families see the shapes our sampler gives them: Qwen3 reads 512 tokens (both
pipelines pad to max_sequence_length); FLUX.2 klein's transformer attends to all 512, Z-Image's
only to each prompt's own tokens (padding dropped), counted here as CAPTION_TOKENS, a typical
templated prompt (the cost grows with the prompt: 512 tokens would add about 12%).

    python -m benchmarks.flops     # the tables in docs/BENCHMARKS.md: every model, full VAE vs TAESD
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


CAPTION_TOKENS = 64  # Z-Image: a prompt of about 40 words with the chat template, padded to 32s
TEXT_TOKENS = 512  # Qwen3 input: both DiT pipelines' max_sequence_length


def flops_per_image(pipe: Any, height: int, width: int, steps: int = 1, cfg: bool = False) -> dict[str, float]:
    """FLOPs per image by part (``text_encoders``, ``unet`` = the denoiser, ``vae_decode``, ``total``)."""
    if getattr(pipe, "transformer", None) is not None:
        return _dit_flops(pipe, height, width, steps, cfg)
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
    passes = 2 if cfg else 1
    counts = {
        "text_encoders": passes * sum(_count(lambda e=e: e(ids)) for e in encoders),
        "unet": passes * steps * _count(lambda: unet(latents, t, encoder_hidden_states=context, **extra)),
        "vae_decode": _count(lambda: vae.decode(latents)),
    }
    counts["total"] = sum(counts.values())
    return {k: float(v) for k, v in counts.items()}


def _dit_flops(pipe: Any, height: int, width: int, steps: int, cfg: bool) -> dict[str, float]:
    """Z-Image (ZImageTransformer2DModel) or FLUX.2 klein (Flux2Transformer2DModel): Qwen3 once per
    prompt, the transformer per step, the VAE decode; the inputs as workers/families/ make them."""
    from turbobatch.workers.families.flux2 import _grid, _line

    transformer, vae, encoder = (_meta_copy(m) for m in (pipe.transformer, pipe.vae, pipe.text_encoder))
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    h, w = height // scale, width // scale
    with torch.device("meta"):
        ids = torch.zeros(1, TEXT_TOKENS, dtype=torch.long)
        mask = torch.ones(1, 1, TEXT_TOKENS, TEXT_TOKENS, dtype=torch.bool)  # 4D: no data-dependent mask code
        t = torch.zeros(1)
        latents = torch.zeros(1, vae.config.latent_channels, h, w)
        if type(transformer).__name__ == "ZImageTransformer2DModel":
            caption = [torch.zeros(CAPTION_TOKENS, transformer.config.cap_feat_dim)]
            x = [torch.zeros(transformer.config.in_channels, 1, h, w)]
            step = lambda: transformer(x, t, caption, return_dict=False)  # noqa: E731
        else:  # FLUX.2: 2x2 patches of the latent as tokens, every text token
            tokens = torch.zeros(1, (h // 2) * (w // 2), transformer.config.in_channels)
            text = torch.zeros(1, TEXT_TOKENS, transformer.config.joint_attention_dim)
            img_ids, txt_ids = _grid(h // 2, w // 2), _line(TEXT_TOKENS)
            step = lambda: transformer(  # noqa: E731
                hidden_states=tokens,
                timestep=t,
                guidance=None,
                encoder_hidden_states=text,
                txt_ids=txt_ids,
                img_ids=img_ids,
                return_dict=False,
            )
        passes = 2 if cfg else 1
        counts = {
            "text_encoders": passes * _count(lambda: encoder(input_ids=ids, attention_mask=mask, use_cache=False)),
            "unet": passes * steps * _count(step),
            "vae_decode": _count(lambda: vae.decode(latents)),
        }
    counts["total"] = sum(counts.values())
    return {k: float(v) for k, v in counts.items()}


def main() -> None:
    """FLOPs per 512x512 1-step image of the UNet turbo models, with their VAE and with a TAESD
    decoder; then per 1024x1024 1-step image of the transformer families."""
    from types import SimpleNamespace

    from turbobatch.models.random_weights import RANDOM_MODELS, build_components, is_dit, tiny_autoencoder

    print("| model | decoder | text encoders | UNet | decode | total |\n|---|---|---|---|---|---|")
    for model in (m for m in RANDOM_MODELS if not is_dit(m)):
        parts = build_components(model, device="meta")
        with torch.device("meta"):
            taesd = tiny_autoencoder(parts["vae"].config.latent_channels)
        for decoder, vae in (("VAE (AutoencoderKL)", parts["vae"]), ("TAESD (AutoencoderTiny)", taesd)):
            f = flops_per_image(SimpleNamespace(**{**parts, "vae": vae}), 512, 512)
            cells = " | ".join(f"{f[k] / 1e12:.3f} TFLOP" for k in ("text_encoders", "unet", "vae_decode", "total"))
            print(f"| {model.split('/')[1]} | {decoder} | {cells} |")
    print(
        "\n| model (1024x1024) | text encoder | transformer per step | decode | total at 1 step |\n|---|---|---|---|---|"
    )
    for model in filter(is_dit, RANDOM_MODELS):
        f = flops_per_image(SimpleNamespace(**build_components(model, device="meta")), 1024, 1024)
        cells = " | ".join(f"{f[k] / 1e12:.3f} TFLOP" for k in ("text_encoders", "unet", "vae_decode", "total"))
        print(f"| {model.split('/')[1]} | {cells} |")


if __name__ == "__main__":
    main()
