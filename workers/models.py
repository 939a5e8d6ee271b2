"""Resolve a model name and load its pipeline through diffusers' ``from_pretrained``.

``resolve_model`` reads only configs (model_index.json, unet and vae configs), so the driver
can reject a model that cannot load, and learn its native size, before any actor starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from jobs.errors import JobError
from workers.tiny import TINY_MODELS, tiny_model_path

SUPPORTED_PIPELINES = ("StableDiffusionPipeline",)

# Noise that says nothing to our users: transformers' note that image processors fall back to
# PIL without torchvision (we never use them), and its warning about over-long prompts, which
# the renderer records as the `truncated` flag instead.
for _name in ("transformers.utils.import_utils", "transformers.tokenization_utils_base"):
    logging.getLogger(_name).setLevel(logging.ERROR)


@dataclass(frozen=True)
class ModelInfo:
    name: str  # what the user asked for
    location: str  # local folder or Hugging Face id handed to from_pretrained
    pipeline_class: str
    native_height: int
    native_width: int


def resolve_model(name: str) -> ModelInfo:
    """Check that ``name`` is a loadable, supported pipeline and read its native size."""
    from diffusers import DiffusionPipeline

    location = str(tiny_model_path(name)) if name in TINY_MODELS else name
    try:
        index = DiffusionPipeline.load_config(location)
        unet = _load_config(location, "unet")
        vae = _load_config(location, "vae")
    except Exception as e:  # noqa: BLE001 - hub, file system and parse errors all mean "cannot load"
        raise JobError(
            f"--model: cannot load {name!r} ({type(e).__name__}: {_first_line(e)}); expected a Hugging Face "
            f"id reachable from here, a local diffusers folder, or one of {', '.join(TINY_MODELS)}"
        ) from None
    pipeline_class = index.get("_class_name", "?")
    if pipeline_class not in SUPPORTED_PIPELINES:
        raise JobError(
            f"--model: {name!r} is a {pipeline_class}; supported pipelines: {', '.join(SUPPORTED_PIPELINES)}"
        )
    scale = 2 ** (len(vae["block_out_channels"]) - 1)
    size = unet["sample_size"]
    height, width = (size, size) if isinstance(size, int) else size
    return ModelInfo(name, location, pipeline_class, height * scale, width * scale)


def load_pipeline(info: ModelInfo, device: str, dtype: str) -> Any:
    """The real loading path, the same for tiny and full models."""
    import torch
    from diffusers import AutoPipelineForText2Image

    from diffusers.utils import logging as diffusers_logging

    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()  # one bar per actor per component floods the driver log
    transformers_logging.disable_progress_bar()
    pipe = AutoPipelineForText2Image.from_pretrained(info.location, dtype=getattr(torch, dtype))
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    # diffusers logs the whole cut-off tail of an over-long prompt; we record a flag instead.
    logging.getLogger(type(pipe).__module__).setLevel(logging.ERROR)
    return pipe


def _load_config(location: str, subfolder: str) -> dict[str, Any]:
    from diffusers import ConfigMixin

    class _Reader(ConfigMixin):
        config_name = "config.json"

    return _Reader.load_config(location, subfolder=subfolder)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""
