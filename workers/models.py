"""Resolve a model name and load its pipeline through diffusers' ``from_pretrained``.

``resolve_model``, ``resolve_controlnet`` and ``check_vae`` read only configs, so the driver can
reject a model that cannot load, or a ControlNet or VAE that does not fit, and learn the native
size, before any actor starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from jobs.errors import JobError
from jobs.spec import JobSpec
from workers.random_weights import RANDOM_MODELS, build_random_pipeline
from workers.random_weights import config as random_config
from workers.tiny import TINY_MODELS, tiny_model_path

SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
# AutoencoderTiny: TAESD-class decoders (madebyollin/taesd, taesdxl), far cheaper than the full VAE.
VAE_CLASSES = ("AutoencoderKL", "AutoencoderTiny")

# Noise that says nothing to our users: transformers' note that image processors fall back to
# PIL without torchvision (we never use them), and its warning about over-long prompts, which
# the renderer records as the `truncated` flag instead.
for _name in ("transformers.utils.import_utils", "transformers.tokenization_utils_base"):
    logging.getLogger(_name).setLevel(logging.ERROR)


class _TinyVaeTypeNotice(logging.Filter):
    """diffusers warns "Expected types for vae: (AutoencoderKL,), got AutoencoderTiny" when a tiny
    autoencoder is swapped in, which is how diffusers' own docs use it; other warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Expected types for vae:") and "AutoencoderTiny" in message)


logging.getLogger("diffusers.pipelines.pipeline_utils").addFilter(_TinyVaeTypeNotice())


@dataclass(frozen=True)
class ModelInfo:
    name: str  # what the user asked for
    location: str  # local folder or Hugging Face id handed to from_pretrained
    pipeline_class: str
    native_height: int
    native_width: int
    cross_attention_dim: int  # text-embedding width the UNet attends to
    addition_embed_type: str | None  # "text_time" for SDXL
    latent_channels: int  # what the UNet makes and a VAE must decode
    vae_scale_factor: int  # image size / latent size


@dataclass(frozen=True)
class ControlNetInfo:
    name: str
    location: str
    cross_attention_dim: int
    addition_embed_type: str | None


def _location(name: str) -> str:
    return str(tiny_model_path(name)) if name in TINY_MODELS else name


def _cannot_load(flag: str, name: str, e: Exception) -> JobError:
    return JobError(
        f"--{flag}: cannot load {name!r} ({type(e).__name__}: {_first_line(e)}); expected a Hugging Face "
        f"id reachable from here, a local diffusers folder, or one of {', '.join(TINY_MODELS)}"
    )


def resolve_model(name: str, weights: str = "pretrained") -> ModelInfo:
    """Check that ``name`` is a loadable, supported pipeline and read its native size."""
    from diffusers import DiffusionPipeline

    if weights == "random":
        return _random_model_info(name)
    location = _location(name)
    try:
        index = DiffusionPipeline.load_config(location)
        unet = _load_config(location, "unet")
        vae = _load_config(location, "vae")
    except Exception as e:  # noqa: BLE001 - hub, file system and parse errors all mean "cannot load"
        raise _cannot_load("model", name, e) from None
    pipeline_class = index.get("_class_name", "?")
    if pipeline_class not in SUPPORTED_PIPELINES:
        raise JobError(
            f"--model: {name!r} is a {pipeline_class}; supported pipelines: {', '.join(SUPPORTED_PIPELINES)}"
        )
    return _model_info(name, location, pipeline_class, unet, vae)


def _model_info(name: str, location: str, pipeline_class: str, unet: dict, vae: dict) -> ModelInfo:
    scale = _vae_scale_factor(vae)
    size = unet["sample_size"]
    height, width = (size, size) if isinstance(size, int) else size
    return ModelInfo(name, location, pipeline_class, height * scale, width * scale, unet["cross_attention_dim"],
                     unet.get("addition_embed_type"), unet.get("out_channels", 4), scale)  # fmt: skip


def _vae_scale_factor(vae: dict[str, Any]) -> int:
    """Image size over latent size: one 2x upsampling between consecutive decoder blocks (how
    diffusers' pipelines compute ``vae_scale_factor``, for AutoencoderKL and AutoencoderTiny)."""
    blocks = vae.get("block_out_channels") or vae.get("decoder_block_out_channels")  # KL | Tiny
    if not blocks:
        raise JobError(f"a VAE config has neither block_out_channels nor decoder_block_out_channels: {sorted(vae)}")
    return vae.get("upsampling_scaling_factor", 2) ** (len(blocks) - 1)


def _random_model_info(name: str) -> ModelInfo:
    """--weights random: the bundled full-size configs stand in for the Hub's."""
    if name not in RANDOM_MODELS:
        raise JobError(f"--weights random: no bundled config for {name!r}; available: {', '.join(RANDOM_MODELS)}")
    unet, vae = random_config(name, "unet"), random_config(name, "vae")
    pipeline_class = "StableDiffusionXLPipeline" if unet.get("addition_embed_type") else "StableDiffusionPipeline"
    return _model_info(name, f"bundled:{RANDOM_MODELS[name]}", pipeline_class, unet, vae)


def resolve_controlnet(name: str, model: ModelInfo) -> ControlNetInfo:
    """Check the ControlNet loads and pairs with the model: SD 2.1 ControlNets with sd-turbo,
    SDXL ControlNets with sdxl-turbo (their cross-attention widths and conditioning differ)."""
    location, config = _component_config("controlnet", name, ("ControlNetModel",))
    info = ControlNetInfo(name, location, config["cross_attention_dim"], config.get("addition_embed_type"))
    if (info.cross_attention_dim, info.addition_embed_type) != (model.cross_attention_dim, model.addition_embed_type):
        raise JobError(
            f"--controlnet: {name!r} was made for {_family(info.addition_embed_type)} models (cross-attention "
            f"width {info.cross_attention_dim}) but --model {model.name!r} is {_family(model.addition_embed_type)} "
            f"(width {model.cross_attention_dim}); use a ControlNet trained for this model family"
        )
    return info


def check_vae(name: str, model: ModelInfo) -> str:
    """A --vae must be an AutoencoderKL or AutoencoderTiny that decodes the model's latents
    (same channel count, same upscaling); returns its class name."""
    _, config = _component_config("vae", name, VAE_CLASSES)
    vae_class = config["_class_name"]
    channels, scale = config.get("latent_channels", 4), _vae_scale_factor(config)
    if (channels, scale) != (model.latent_channels, model.vae_scale_factor):
        raise JobError(
            f"--vae: {name!r} decodes {channels}-channel latents upscaled {scale}x, but --model {model.name!r} "
            f"makes {model.latent_channels}-channel latents upscaled {model.vae_scale_factor}x; use a VAE made "
            "for this model family"
        )
    return vae_class


def _component_config(flag: str, name: str, expected: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    """Location and config of a single model folder (not a pipeline), of an expected class."""
    location = _location(name)
    try:
        config = _load_config(location, None)
    except Exception as e:  # noqa: BLE001
        raise _cannot_load(flag, name, e) from None
    if config.get("_class_name") not in expected:
        raise JobError(
            f"--{flag}: {name!r} is a {config.get('_class_name')}; expected a folder of {' or '.join(expected)}"
        )
    return location, config


def _family(addition_embed_type: str | None) -> str:
    return "SDXL" if addition_embed_type == "text_time" else "SD 1.x/2.x"


def load_pipeline(spec: JobSpec) -> Any:
    """The real loading path, the same for tiny and full models: pipeline, optional VAE swap,
    optional ControlNet (AutoPipeline then picks the matching ControlNet pipeline class)."""
    import diffusers
    import torch
    from diffusers import AutoPipelineForText2Image, ControlNetModel
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()  # one bar per actor per component floods the driver log
    transformers_logging.disable_progress_bar()
    dtype = getattr(torch, spec.dtype)
    if spec.weights == "random":
        pipe = build_random_pipeline(spec.model, spec.device, dtype)
        return _ready(pipe)
    components: dict[str, Any] = {}
    if spec.vae:
        location, config = _component_config("vae", spec.vae, VAE_CLASSES)
        vae_class = getattr(diffusers, config["_class_name"])  # AutoencoderKL or AutoencoderTiny
        components["vae"] = vae_class.from_pretrained(location, dtype=dtype)
    if spec.controlnet:
        components["controlnet"] = ControlNetModel.from_pretrained(_location(spec.controlnet), dtype=dtype)
    pipe = AutoPipelineForText2Image.from_pretrained(_location(spec.model), dtype=dtype, **components)
    return _ready(pipe.to(spec.device))


def _ready(pipe: Any) -> Any:
    pipe.set_progress_bar_config(disable=True)
    # diffusers logs the whole cut-off tail of an over-long prompt; we record a flag instead.
    logging.getLogger(type(pipe).__module__).setLevel(logging.ERROR)
    return pipe


def _load_config(location: str, subfolder: str | None) -> dict[str, Any]:
    from diffusers import ConfigMixin

    class _Reader(ConfigMixin):
        config_name = "config.json"

    return _Reader.load_config(location, subfolder=subfolder)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""
