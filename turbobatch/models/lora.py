"""LoRA adapters (--lora, --lora-column): resolved and checked on the driver, loaded in each actor.

Driver (``resolve_loras``, before any actor starts): the model's pipeline must be one diffusers
loads LoRAs into (``LORA_PIPELINES``: SD and SDXL into the UNet and text encoders, Z-Image and
FLUX.2 klein into the transformer only, as their loader mixins say); each SOURCE (Hub id, folder, .safetensors
file, fsspec URL) is listed like a model folder (models/source.py) and its weight file chosen;
its safetensors header (names and shapes only, no weights) is checked against the model's own
weight headers: every ``<component>.<module>.lora_A/B`` (or ``lora.down/up``) must name a module
the model has, with matching in/out features. A LoRA for another base model stops the job with
an error naming the LoRA, the model and the first mismatching module. ``with_lora_sources`` then
adds each as a component the nodes fetch once (models/cache.py), like the model's files.

Actor (``load_loras``): ``pipe.load_lora_weights(file, adapter_name=...)`` per LoRA. Without
--lora-column the set is fused into the weights at load (one LoRA: ``fuse_lora(lora_scale=s)``;
several: ``set_adapters`` with their scales, then ``fuse_lora``): it then costs nothing per
image. With --lora-column the adapters stay apart and ``LoraSwitch.activate`` picks each batch's
(``set_adapters``, or ``disable_lora`` for rows without one); batches are grouped by LoRA.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from turbobatch.errors import JobError
from turbobatch.models.resolve import ModelInfo
from turbobatch.models.source import ModelSource, open_source
from turbobatch.spec.job import JobSpec
from turbobatch.spec.resolved import ResolvedJob

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what save_lora_weights writes
SOURCE_PREFIX = "lora:"  # spec.sources key of a LoRA: "lora:<name>"
# Pipelines whose diffusers class has load_lora_weights (a LoRA loader mixin), and the components
# that mixin loads (``_lora_loadable_modules``): a LoRA module outside them is a mismatch.
LORA_PIPELINES = {
    "StableDiffusionPipeline": ("unet", "text_encoder"),  # StableDiffusionLoraLoaderMixin
    "StableDiffusionXLPipeline": ("unet", "text_encoder", "text_encoder_2"),  # StableDiffusionXLLoraLoaderMixin
    "ZImagePipeline": ("transformer",),  # ZImageLoraLoaderMixin
    "Flux2KleinPipeline": ("transformer",),  # Flux2LoraLoaderMixin
}
_DOWN, _UP = (".lora_A.weight", ".lora.down.weight"), (".lora_B.weight", ".lora.up.weight")


@dataclass(frozen=True)
class LoraInfo:
    name: str
    given: str  # the SOURCE as the user wrote it
    scale: float
    source: ModelSource  # the folder holding the weight file
    weight_name: str  # the file's name in that folder


def resolve_loras(spec: JobSpec, model: ModelInfo) -> list[LoraInfo]:
    """Each --lora, listed and checked against ``model`` (JobError naming what does not fit)."""
    if not spec.lora:
        return []
    if model.source is None:
        raise JobError("--lora: not with --weights random (no trained weights to adapt)")
    if model.pipeline_class not in LORA_PIPELINES:
        raise JobError(
            f"--lora: --model {model.name!r} is a {model.pipeline_class}, which diffusers loads no LoRAs "
            f"into here; LoRAs work with {', '.join(LORA_PIPELINES)} models; drop --lora"
        )
    shapes = model_shapes(model.source, LORA_PIPELINES[model.pipeline_class])
    loras = []
    for name, given, scale in spec.lora:
        source, weight_name = _open(given, spec.input_options())
        check_fits(name, given, read_header(source, weight_name), shapes, model.name)
        loras.append(LoraInfo(name, given, scale, source, weight_name))
    return loras


def _open(given: str, options: dict[str, Any]) -> tuple[ModelSource, str]:
    """The folder a LoRA lives in and its weight file's name: a .safetensors path names the file
    (its folder is listed); a folder or Hub id must hold exactly one top-level .safetensors (or
    ``pytorch_lora_weights.safetensors``)."""
    if given.endswith(".safetensors"):
        folder, _, weight_name = given.rstrip("/").rpartition("/")
        source = open_source("lora", folder or ".", options)
        if weight_name not in source.files:
            raise JobError(f"--lora: {given!r} not found (no {weight_name} in {source.location})")
        return source, weight_name
    source = open_source("lora", given, options)
    top = sorted(f for f in source.files if f.endswith(".safetensors") and "/" not in f)
    if LORA_WEIGHT_NAME in top:
        return source, LORA_WEIGHT_NAME
    if len(top) != 1:
        raise JobError(
            f"--lora: {given!r} holds {len(top)} top-level .safetensors files ({', '.join(top) or 'none'}); "
            "name the file: SOURCE/file.safetensors"
        )
    return source, top[0]


def read_header(source: ModelSource, rel: str) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors file's header: its first 8 + N bytes, no weights."""
    if source.root is not None:
        with open(os.path.join(source.root, rel), "rb") as f:
            return _parse_header(f)
    if source.kind == "remote":
        from turbobatch.output.storage import open_fs

        fs, path = open_fs(f"{source.location}/{rel}", source.storage_options)
        with fs.open(path, "rb") as f:
            return _parse_header(f)
    from huggingface_hub import parse_safetensors_file_metadata

    meta = parse_safetensors_file_metadata(source.location, rel, revision=source.revision)
    return {name: list(info.shape) for name, info in meta.tensors.items()}


def _parse_header(f: Any) -> dict[str, list[int]]:
    (size,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(size))
    return {name: entry["shape"] for name, entry in header.items() if name != "__metadata__"}


def model_shapes(source: ModelSource, components: tuple[str, ...] | None = None) -> dict[str, dict[str, list[int]]]:
    """Component -> weight name -> shape, from the headers of the model's weight files (any one
    variant per component: shapes do not depend on it); only ``components`` when given."""
    shapes: dict[str, dict[str, list[int]]] = {}
    by_component: dict[str, list[str]] = {}
    for rel in sorted(source.files):
        component, _, name = rel.partition("/")
        if name.endswith(".safetensors") and "/" not in name and (components is None or component in components):
            by_component.setdefault(component, []).append(rel)
    for component, files in by_component.items():
        plain = [f for f in files if ".fp16." not in f] or files  # one variant
        shapes[component] = {}
        for rel in plain:
            shapes[component].update(read_header(source, rel))
    return shapes


def check_fits(
    name: str, given: str, lora: dict[str, list[int]], model: dict[str, dict[str, list[int]]], model_name: str
) -> None:
    """JobError at the first LoRA module the model lacks or whose features differ from the model's."""
    checked = 0
    for key, shape in sorted(lora.items()):
        suffix = next((s for s in _DOWN + _UP if key.endswith(s)), None)
        if suffix is None or "." not in key:
            continue  # alphas, kohya-style names: not in diffusers' format, left to load_lora_weights
        component, _, module = key[: -len(suffix)].partition(".")
        weights = model.get(component)
        base = weights.get(f"{module}.weight") if weights is not None else None
        problem = None
        if weights is None:
            problem = f"the model has no component {component!r} that diffusers loads LoRAs into"
        elif base is None:
            problem = f"the model has no module {component}.{module}"
        elif suffix in _DOWN and shape[1:2] != base[1:2]:
            problem = f"{component}.{module} takes {base[1]} features, the LoRA's {shape[1]}"
        elif suffix in _UP and shape[:1] != base[:1]:
            problem = f"{component}.{module} makes {base[0]} features, the LoRA's {shape[0]}"
        if problem:
            raise JobError(
                f"--lora: {name!r} ({given}) was not made for --model {model_name!r}: first mismatch at "
                f"{key}: {problem}; use a LoRA trained for this base model"
            )
        checked += 1
        if component.startswith("text_encoder"):
            _check_text_encoder_support(name, given)
    if checked == 0:
        print(f"turbobatch: warning: --lora {given}: no diffusers-format LoRA modules to check; checked at load")


def _check_text_encoder_support(name: str, given: str) -> None:
    """transformers loads text-encoder LoRAs only with a peft it accepts: refuse the job here
    rather than in every actor."""
    try:
        from transformers.integrations.peft import MIN_PEFT_VERSION
        from transformers.utils.peft_utils import check_peft_version

        check_peft_version(min_version=MIN_PEFT_VERSION)
    except ImportError:
        return
    except ValueError as e:
        raise JobError(
            f"--lora: {name!r} ({given}) adapts a text encoder, which this install cannot load: {e}"
        ) from None


def with_lora_sources(spec: ResolvedJob, loras: list[LoraInfo]) -> ResolvedJob:
    """The spec with each LoRA as a component every node fetches once (``lora:<name>``). LoRAs of
    one folder list the same files, so their node copy is one complete folder."""
    if not loras:
        return spec
    by_folder: dict[tuple[str, str, str | None], list[str]] = {}
    for lora in loras:
        by_folder.setdefault((lora.source.kind, lora.source.location, lora.source.revision), []).append(
            lora.weight_name
        )
    sources = dict(spec.sources)
    for lora in loras:
        files = sorted(set(by_folder[(lora.source.kind, lora.source.location, lora.source.revision)]))
        sources[SOURCE_PREFIX + lora.name] = {**lora.source.to_spec("none", files), "weight_name": lora.weight_name}
    return dataclasses.replace(spec, sources=sources)


# -- actor side --------------------------------------------------------------------------
def _adapter(i: int) -> str:
    return f"lora{i}"  # by position: peft module names may not hold dots; the user's names may


class LoraSwitch:
    """--lora-column: the adapter each batch uses, switched only when it changes."""

    def __init__(self, pipe: Any, adapters: dict[str, tuple[str, float]]) -> None:
        self.pipe, self.adapters = pipe, adapters  # user name -> (adapter name, scale)
        self.active: str | None = "unset"
        self.switches = 0

    def activate(self, name: str | None) -> None:
        if name == self.active:
            return
        if name is None:
            self.pipe.disable_lora()
        else:
            adapter, scale = self.adapters[name]
            self.pipe.enable_lora()
            self.pipe.set_adapters([adapter], [scale])
        self.active = name
        self.switches += 1


def load_loras(pipe: Any, spec: ResolvedJob, locations: Mapping[str, str] | None = None) -> LoraSwitch | None:
    """Load the job's LoRAs into ``pipe``: fused (no --lora-column; returns None) or kept apart
    for per-batch switching (returns the LoraSwitch)."""
    if not spec.lora:
        return None
    where = dict(locations or {})
    adapters: dict[str, tuple[str, float]] = {}
    for i, (name, given, scale) in enumerate(spec.lora):
        source = spec.sources.get(SOURCE_PREFIX + name)
        folder = where.get(SOURCE_PREFIX + name) or (source["location"] if source else None)
        weight_name = source["weight_name"] if source else None
        if source is None:  # a spec the driver did not resolve (tests): the source as given, local
            folder, weight_name = (
                (os.path.dirname(given), os.path.basename(given)) if given.endswith(".safetensors") else (given, None)
            )
        pipe.load_lora_weights(folder, weight_name=weight_name, adapter_name=_adapter(i))
        adapters[name] = (_adapter(i), scale)
    if spec.lora_column:
        switch = LoraSwitch(pipe, adapters)
        switch.activate(None)
        return switch
    names = [a for a, _ in adapters.values()]
    if len(names) == 1:
        pipe.fuse_lora(lora_scale=adapters[spec.lora[0][0]][1], adapter_names=names)
    else:
        pipe.set_adapters(names, [s for _, s in adapters.values()])
        pipe.fuse_lora(adapter_names=names)
    return None
