"""Tiny LoRAs for the tiny twins, built offline: peft adapters with random weights on the
denoiser's attention projections (the UNet's, or the transformer's for Z-Image and FLUX.2 klein),
saved in diffusers' format by the pipeline's own ``save_lora_weights``."""

from __future__ import annotations

from pathlib import Path


def make_tiny_lora(model: str, folder: Path, seed: int, rank: int = 4, file_name: str | None = None) -> Path:
    """A LoRA folder for ``model`` (tiny-sd-turbo, tiny-sdxl-turbo, tiny-z-image-turbo,
    tiny-flux2-klein); its weights file's path."""
    import torch
    from diffusers import AutoPipelineForText2Image
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from turbobatch.models.tiny import tiny_model_path

    pipe = AutoPipelineForText2Image.from_pretrained(tiny_model_path(model))
    name = "unet" if hasattr(pipe, "unet") else "transformer"
    denoiser = getattr(pipe, name)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False
    )
    denoiser.add_adapter(config)
    with torch.no_grad():  # strong enough to change a tiny model's images visibly
        for key, p in denoiser.named_parameters():
            if "lora_" in key:
                p.mul_(3.0)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(denoiser))
    kwargs = {"weight_name": file_name} if file_name else {}
    type(pipe).save_lora_weights(str(folder), **{f"{name}_lora_layers": layers}, **kwargs)
    return folder / (file_name or "pytorch_lora_weights.safetensors")
