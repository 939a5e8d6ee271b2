"""Resolve a model name and load its pipeline through diffusers' ``from_pretrained``.

``resolve_model``, ``resolve_controlnet`` and ``resolve_vae`` read only a listing and configs
(models/source.py: local folder, fsspec URL or Hub id), so the driver can reject a model
that cannot load, or a ControlNet or VAE that does not fit, and learn the native size, before any
actor starts; ``resolve_weights`` then picks each one's variant (once the dtype is known) and the
files a node fetches. ``load_pipeline`` runs in each actor, on the node's copies.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from turbobatch.errors import JobError
from turbobatch.models.families import FAMILY_OF_PIPELINE, refuse_component
from turbobatch.models.random_weights import RANDOM_MODELS, build_random_pipeline, is_dit
from turbobatch.models.random_weights import config as random_config
from turbobatch.models.source import REMOTE, ModelSource, cannot_load, loads_in_place, open_source
from turbobatch.models.tiny import TINY_MODELS, tiny_model_path
from turbobatch.models.variants import choose_variant, needed_files
from turbobatch.spec.resolved import ResolvedJob

SUPPORTED_PIPELINES = tuple(FAMILY_OF_PIPELINE)  # SD, SDXL, ZImagePipeline, Flux2KleinPipeline
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
    components: tuple[str, ...] = ()  # model_index.json's component folders
    source: ModelSource | None = None  # None for --weights random
    family: str = "sd"  # models/families.py: sd, sdxl, z-image, flux2-klein
    distilled: bool = False  # FLUX.2 klein: step-distilled (guidance has no effect)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE's scale (x2 for the 2x2-patch DiTs)."""
        return self.vae_scale_factor * (1 if self.family in ("sd", "sdxl") else 2)


@dataclass(frozen=True)
class ControlNetInfo:
    name: str
    location: str
    cross_attention_dim: int
    addition_embed_type: str | None
    source: ModelSource | None = None


@dataclass(frozen=True)
class VaeInfo:
    name: str
    vae_class: str  # AutoencoderKL or AutoencoderTiny
    source: ModelSource


def _location(name: str) -> str:
    return str(tiny_model_path(name)) if name in TINY_MODELS else name


def resolve_model(name: str, weights: str = "pretrained", storage_options: dict[str, Any] | None = None) -> ModelInfo:
    """Check that ``name`` is a loadable, supported pipeline and read its native size.
    ``storage_options``: the input side's, for a model at an fsspec URL."""
    if weights == "random":
        return _random_model_info(name)
    source = open_source("model", name, storage_options)
    try:
        index = source.read_json("model_index.json")
        pipeline_class = index.get("_class_name", "?")
        if pipeline_class not in SUPPORTED_PIPELINES:
            raise JobError(
                f"--model: {name!r} is a {pipeline_class}; supported pipelines: {', '.join(SUPPORTED_PIPELINES)}"
            )
        family = FAMILY_OF_PIPELINE[pipeline_class]
        denoiser = source.read_json("unet/config.json" if family in ("sd", "sdxl") else "transformer/config.json")
        vae = source.read_json("vae/config.json")
    except JobError:
        raise
    except Exception as e:  # noqa: BLE001 - hub, file system and parse errors all mean "cannot load"
        raise cannot_load("model", name, e) from None
    components = tuple(
        k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and all(v)
    )
    if family in ("sd", "sdxl"):
        return _model_info(name, source.location, pipeline_class, denoiser, vae, components, source)
    return _dit_info(name, source.location, pipeline_class, denoiser, vae, components, source, index)


def _dit_info(
    name: str,
    location: str,
    pipeline_class: str,
    transformer: dict,
    vae: dict,
    components: tuple[str, ...] = (),
    source: ModelSource | None = None,
    index: dict | None = None,
) -> ModelInfo:
    """Z-Image and FLUX.2 klein: native size = the VAE config's sample_size (1024 for both published
    models, the size both pipelines default to); text width and latent channels from the transformer."""
    family = FAMILY_OF_PIPELINE[pipeline_class]
    size = vae.get("sample_size", 1024)
    height, width = (size, size) if isinstance(size, int) else size
    text_width = transformer.get("cap_feat_dim") or transformer.get("joint_attention_dim")
    return ModelInfo(
        name,
        location,
        pipeline_class,
        height,
        width,
        text_width,
        None,
        vae.get("latent_channels", 16),
        _vae_scale_factor(vae),
        components,
        source,
        family,
        bool((index or {}).get("is_distilled", False)),
    )


def _model_info(
    name: str,
    location: str,
    pipeline_class: str,
    unet: dict,
    vae: dict,
    components: tuple[str, ...] = (),
    source: ModelSource | None = None,
) -> ModelInfo:
    scale = _vae_scale_factor(vae)
    size = unet["sample_size"]
    height, width = (size, size) if isinstance(size, int) else size
    return ModelInfo(
        name,
        location,
        pipeline_class,
        height * scale,
        width * scale,
        unet["cross_attention_dim"],
        unet.get("addition_embed_type"),
        unet.get("out_channels", 4),
        scale,
        components,
        source,
        "sdxl" if unet.get("addition_embed_type") == "text_time" else "sd",
    )


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
    location = f"bundled:{RANDOM_MODELS[name]}"
    if is_dit(name):
        index = random_config(name, "model_index")
        transformer, vae = random_config(name, "transformer"), random_config(name, "vae")
        return _dit_info(name, location, index["_class_name"], transformer, vae, index=index)
    unet, vae = random_config(name, "unet"), random_config(name, "vae")
    pipeline_class = "StableDiffusionXLPipeline" if unet.get("addition_embed_type") else "StableDiffusionPipeline"
    return _model_info(name, location, pipeline_class, unet, vae)


def resolve_controlnet(name: str, model: ModelInfo, storage_options: dict[str, Any] | None = None) -> ControlNetInfo:
    """Check the ControlNet loads and pairs with the model: SD 2.1 ControlNets with sd-turbo,
    SDXL ControlNets with sdxl-turbo (their cross-attention widths and conditioning differ)."""
    if model.family not in ("sd", "sdxl"):
        refuse_component("controlnet", name, model.name, model.family)
    source, config = _component_config("controlnet", name, ("ControlNetModel",), storage_options)
    info = ControlNetInfo(
        name, source.location, config["cross_attention_dim"], config.get("addition_embed_type"), source
    )
    if (info.cross_attention_dim, info.addition_embed_type) != (model.cross_attention_dim, model.addition_embed_type):
        raise JobError(
            f"--controlnet: {name!r} was made for {_family(info.addition_embed_type)} models (cross-attention "
            f"width {info.cross_attention_dim}) but --model {model.name!r} is {_family(model.addition_embed_type)} "
            f"(width {model.cross_attention_dim}); use a ControlNet trained for this model family"
        )
    return info


def resolve_vae(name: str, model: ModelInfo, storage_options: dict[str, Any] | None = None) -> VaeInfo:
    """A --vae must be an AutoencoderKL or AutoencoderTiny that decodes the model's latents
    (same channel count, same upscaling); its class and listing (for resolve_weights)."""
    if model.family not in ("sd", "sdxl"):
        refuse_component("vae", name, model.name, model.family)
    source, config = _component_config("vae", name, VAE_CLASSES, storage_options)
    vae_class = config["_class_name"]
    channels, scale = config.get("latent_channels", 4), _vae_scale_factor(config)
    if (channels, scale) != (model.latent_channels, model.vae_scale_factor):
        raise JobError(
            f"--vae: {name!r} decodes {channels}-channel latents upscaled {scale}x, but --model {model.name!r} "
            f"makes {model.latent_channels}-channel latents upscaled {model.vae_scale_factor}x; use a VAE made "
            "for this model family"
        )
    return VaeInfo(name, vae_class, source)


def _component_config(
    flag: str, name: str, expected: tuple[str, ...], storage_options: dict[str, Any] | None = None
) -> tuple[ModelSource, dict[str, Any]]:
    """Listing and config of a single model folder (not a pipeline), of an expected class."""
    source = open_source(flag, name, storage_options)
    try:
        config = source.read_json("config.json")
    except Exception as e:  # noqa: BLE001
        raise cannot_load(flag, name, e) from None
    if config.get("_class_name") not in expected:
        raise JobError(
            f"--{flag}: {name!r} is a {config.get('_class_name')}; expected a folder of {' or '.join(expected)}"
        )
    return source, config


def resolve_weights(
    spec: ResolvedJob, model: ModelInfo, vae: VaeInfo | None = None, controlnet: ControlNetInfo | None = None
) -> ResolvedJob:
    """The variant of each component and the files each node fetches for it, decided once here from
    the listings, after resolve_spec chose the dtype (``--variant auto`` depends on it)."""
    if spec.weights == "random" or model.source is None:
        return spec
    sources: dict[str, Any] = {}
    variants: dict[str, str] = {}
    skip = ("vae",) if vae is not None else ()  # the pipeline's own VAE is replaced, not loaded
    for component, source, components, skipped in (
        ("model", model.source, model.components, skip),
        ("vae", vae and vae.source, None, ()),
        ("controlnet", controlnet and controlnet.source, None, ()),
    ):
        if source is None:
            continue
        variant = choose_variant(spec.variant, spec.dtype, source.files, components, component, source.name)
        sources[component] = source.to_spec(variant, needed_files(source.files, variant, components, skipped))
        variants[f"{component}_variant"] = variant
    return dataclasses.replace(spec, sources=sources, **variants)


def describe_weights(spec: ResolvedJob) -> str | None:
    """One line: each component's variant and what a node fetches for it."""
    parts = []
    for component, source in spec.sources.items():
        size = sum(f["size"] for f in source["files"].values())
        how = (
            "loaded in place"
            if loads_in_place(source)
            else "copied once per node"
            if source["kind"] == REMOTE
            else "fetched from the Hub once per node"
        )
        parts.append(
            f"{component} variant {source['variant']} ({len(source['files'])} files, {size / 2**20:,.1f} MiB, {how})"
        )
    return f"turbobatch: weights: {'; '.join(parts)}" if parts else None


def _family(addition_embed_type: str | None) -> str:
    return "SDXL" if addition_embed_type == "text_time" else "SD 1.x/2.x"


def load_pipeline(spec: ResolvedJob, locations: Mapping[str, str] | None = None) -> Any:
    """The real loading path, the same for tiny and full models: pipeline, optional VAE swap,
    optional ControlNet (AutoPipeline then picks the matching ControlNet pipeline class).

    ``locations``: component -> the folder to load it from (this node's copies,
    models/cache.py); a component not in it loads from its name. Each loads the variant the
    driver chose (``spec.model_variant``, ...: "fp16" passes ``variant="fp16"``)."""
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
    where = dict(locations or {})

    def load_args(component: str, name: str) -> tuple[str, dict[str, Any]]:
        variant = "fp16" if getattr(spec, f"{component}_variant") == "fp16" else None
        return where.get(component) or _location(name), {"dtype": dtype, "variant": variant}

    components: dict[str, Any] = {}
    if spec.vae:
        location, kwargs = load_args("vae", spec.vae)
        vae_class = getattr(diffusers, _load_config(location, None)["_class_name"])  # AutoencoderKL or AutoencoderTiny
        components["vae"] = vae_class.from_pretrained(location, **kwargs)
    if spec.controlnet:
        location, kwargs = load_args("controlnet", spec.controlnet)
        components["controlnet"] = ControlNetModel.from_pretrained(location, **kwargs)
    location, kwargs = load_args("model", spec.model)
    pipe = AutoPipelineForText2Image.from_pretrained(location, **kwargs, **components)
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
