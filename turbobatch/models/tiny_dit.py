"""Tiny random-weight twins of the flow-matching DiT pipelines: Z-Image-Turbo (ZImagePipeline)
and FLUX.2 klein 4B (Flux2KleinPipeline), built as models/tiny.py builds the UNet twins.

Same component classes as the published models (Qwen3 text encoders, ZImageTransformer2DModel
/ Flux2Transformer2DModel, AutoencoderKL / AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler
with the published scheduler settings), a byte-level Qwen2 tokenizer from an in-code vocabulary
with a Qwen3-style chat template; saved with ``save_pretrained`` and loaded through
``from_pretrained`` like real weights. Fixed seeds: every machine builds the same model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The published schedulers: Z-Image-Turbo shifts by a fixed 3.0; FLUX.2 shifts by the size
# (the pipeline passes ``mu``: dynamic shifting).
Z_IMAGE_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}
FLUX2_SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "time_shift_type": "exponential",
}
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Qwen3's template for what the pipelines send: user messages, the generation prompt, and the
# empty think block when thinking is off (FLUX.2 klein turns it off, Z-Image leaves it on).
CHAT_TEMPLATE = (
    "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)


def qwen_tokenizer() -> Any:
    """Byte-level BPE (every byte a token, no merges) with Qwen's special tokens; pads right."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab: dict[str, int] = {}
    for char in bytes_to_unicode().values():
        vocab.setdefault(char, len(vocab))
    for token in SPECIAL:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], chat_template=CHAT_TEMPLATE, model_max_length=131072)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL[1:])})
    return tokenizer


def _qwen3_config(layers: int) -> Any:
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=256 + len(SPECIAL),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=1024,
        pad_token_id=256,
        eos_token_id=258,
    )


def build_z_image_turbo(folder: Path) -> None:
    """ZImagePipeline: 2-layer Qwen3Model (hidden_states[-2] is its first layer's), 2+1-layer
    DiT of width 32, a 16-channel AutoencoderKL upscaling 2x (sizes in multiples of 4)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Model

    torch.manual_seed(0)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=16,
        axes_dims=[8, 4, 4],
        axes_lens=[1024, 128, 128],  # captions of up to 512 tokens come first on the first axis
    )
    with torch.no_grad():  # created with torch.empty: fixed values, so every build is the same
        transformer.x_pad_token.copy_(torch.randn_like(transformer.x_pad_token))
        transformer.cap_pad_token.copy_(torch.randn_like(transformer.cap_pad_token))
    torch.manual_seed(1)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        latent_channels=16,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    torch.manual_seed(2)
    ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**Z_IMAGE_SCHEDULER),
        vae=vae,
        text_encoder=Qwen3Model(_qwen3_config(2)),
        tokenizer=qwen_tokenizer(),
        transformer=transformer,
    ).save_pretrained(folder)


def build_flux2_klein(folder: Path) -> None:
    """Flux2KleinPipeline (step-distilled, as klein 4B): a 27-layer Qwen3ForCausalLM (the pipeline
    reads hidden states 9, 18 and 27), a 1+1-block DiT, an AutoencoderKLFlux2 with 4 latent
    channels upscaling 2x and batch-norm statistics that are not the identity."""
    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=16,  # 2x2 patches of the VAE's 4 channels
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=48,  # 3 text layers x 16
        timestep_guidance_channels=256,
        axes_dims_rope=[4, 4, 4, 4],
        guidance_embeds=False,
    )
    torch.manual_seed(1)
    vae = AutoencoderKLFlux2(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    with torch.no_grad():
        vae.bn.running_mean.copy_(torch.randn_like(vae.bn.running_mean) * 0.2)
        vae.bn.running_var.copy_(torch.rand_like(vae.bn.running_var) + 0.5)
    torch.manual_seed(2)
    Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX2_SCHEDULER),
        vae=vae,
        text_encoder=Qwen3ForCausalLM(_qwen3_config(27)),
        tokenizer=qwen_tokenizer(),
        transformer=transformer,
        is_distilled=True,
    ).save_pretrained(folder)
