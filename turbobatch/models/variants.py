"""Which weight files a model folder's variant needs: pure functions over a file listing.

A diffusers folder may hold each component's weights twice: plain (``unet/diffusion_pytorch_model
.safetensors``, usually float32) and half precision (``unet/diffusion_pytorch_model.fp16.safetensors``,
half the bytes). ``from_pretrained(..., variant="fp16")`` loads the second kind, folder by folder:
a component folder without fp16 files loads its plain ones (diffusers 0.42,
``_identify_model_variants``), a pipeline with no fp16 file at all raises ``ValueError``, and a single
model (``AutoencoderKL``, ``ControlNetModel``) without them raises ``OSError``.

The driver decides the variant here from the listing alone (``choose_variant``), before any actor
starts, and the same listing says which files a node must fetch (``needed_files``): the configs and
tokenizer files, and for each component only the weights that variant loads, never the other
precision, other formats (ONNX, Flax) or single-file checkpoints next to the folders.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Iterable

from turbobatch.errors import JobError
from turbobatch.spec.job import VARIANTS

LOW_PRECISION = ("float16", "bfloat16")

_PREFIX = r"(?:diffusion_pytorch_model|model|pytorch_model)"  # diffusers' and transformers' weight names
_EXT = r"(?:safetensors|bin)"
_SHARD = r"-\d{5}-of-\d{5}"
# Plain: diffusion_pytorch_model.safetensors, model-00001-of-00002.safetensors, model.safetensors.index.json
_PLAIN = re.compile(rf"{_PREFIX}(?:{_SHARD})?\.{_EXT}|{_PREFIX}\.{_EXT}\.index\.json")
# fp16: diffusion_pytorch_model.fp16.safetensors, model.fp16-00001-of-00002.safetensors,
# model.safetensors.index.fp16.json, and the legacy sharded names diffusers still reads
# (model-00001-of-00002.fp16.safetensors, model.safetensors.fp16.index.json).
_FP16 = re.compile(
    rf"{_PREFIX}\.fp16(?:{_SHARD})?\.{_EXT}|{_PREFIX}\.{_EXT}\.index\.fp16\.json"
    rf"|{_PREFIX}{_SHARD}\.fp16\.{_EXT}|{_PREFIX}\.{_EXT}\.fp16\.index\.json"
)
# Other variants of the same names (non_ema, ema, fp32, ...): never fetched.
_OTHER_VARIANT = re.compile(rf"{_PREFIX}\.\w+(?:{_SHARD})?\.{_EXT}|{_PREFIX}\.{_EXT}\.(?:index\.\w+|\w+\.index)\.json")
# Weights from_pretrained does not read from a diffusers folder: other formats, single-file checkpoints.
_NOT_LOADED = (
    ".safetensors",
    ".bin",
    ".ckpt",
    ".pt",
    ".pth",
    ".onnx",
    ".onnx_data",
    ".pb",
    ".msgpack",
    ".h5",
    ".gguf",
    ".npz",
    ".tflite",
    ".mlmodel",
    ".flashpack",
)


def is_weight_file(name: str) -> bool:
    """A weight file (or its shard index) of any kind: what a variant choice is about."""
    base = name.rsplit("/", 1)[-1]
    return base.endswith(_NOT_LOADED) or any(p.fullmatch(base) for p in (_PLAIN, _FP16, _OTHER_VARIANT))


def _weights(names: Iterable[str], pattern: re.Pattern[str]) -> set[str]:
    """The files of one kind in one folder, safetensors preferred (as from_pretrained prefers them)."""
    matching = {n for n in names if pattern.fullmatch(n.rsplit("/", 1)[-1])}
    safetensors = {n for n in matching if ".safetensors" in n}
    return safetensors if safetensors else matching


def folders(files: Iterable[str], components: tuple[str, ...] | None) -> dict[str, list[str]]:
    """Files per folder that from_pretrained reads: a pipeline's component folders (one level deep,
    as diffusers reads them), or a single model's root (``components`` None)."""
    groups: dict[str, list[str]] = {}
    for name in files:
        folder, _, base = name.rpartition("/")
        if components is None and not folder or components is not None and folder in components:
            groups.setdefault(folder, []).append(name)
    return groups


def fp16_folders(files: Iterable[str], components: tuple[str, ...] | None) -> dict[str, bool]:
    """For each folder that holds weights: whether it has fp16 files."""
    return {
        folder: bool(_weights(names, _FP16))
        for folder, names in folders(files, components).items()
        if any(is_weight_file(n) for n in names)
    }


def choose_variant(
    requested: str, dtype: str | None, files: Iterable[str], components: tuple[str, ...] | None, flag: str, name: str
) -> str:
    """``--variant`` for one model (``--flag name``): "fp16" or "none" (plain files).

    auto: fp16 when the job renders in float16 or bfloat16 and the model has fp16 files (folders
    without them load their plain ones, as diffusers does), else plain; fp16 too when some folder
    has only fp16 files, where plain files cannot load. fp16: JobError when the model has none.
    none: JobError when some folder has only fp16 files. A folder whose weights from_pretrained
    cannot read at all (only a .ckpt, only ONNX) is a JobError whatever was asked.
    """
    if requested not in VARIANTS:
        raise JobError(f"--variant: {requested!r} is not valid; choose one of {', '.join(VARIANTS)}")
    names = list(files)
    has_fp16 = fp16_folders(names, components)
    groups = folders(names, components)
    no_plain = [f for f in has_fp16 if not _weights(groups[f], _PLAIN)]
    unloadable = sorted(f or "." for f in no_plain if not has_fp16[f])
    if unloadable:
        raise JobError(
            f"--{flag}: {name!r} has no weights from_pretrained can load in {', '.join(unloadable)} "
            "(expected diffusion_pytorch_model[.fp16].safetensors, model[.fp16].safetensors or .bin)"
        )
    fp16_only = sorted(f or "." for f in no_plain)
    if requested == "fp16":
        if not any(has_fp16.values()):
            raise JobError(
                f"--variant fp16: --{flag} {name!r} has no fp16 weight files (*.fp16.safetensors); "
                "use --variant auto or none to load its plain files"
            )
        return "fp16"
    if requested == "none":
        if fp16_only:
            raise JobError(
                f"--variant none: --{flag} {name!r} has only fp16 weight files in {', '.join(fp16_only)}; "
                "use --variant auto or fp16"
            )
        return "none"
    if any(has_fp16.values()) and (dtype in LOW_PRECISION or fp16_only):
        return "fp16"
    return "none"


def needed_files(
    files: Iterable[str], variant: str, components: tuple[str, ...] | None, skip_weights_of: Iterable[str] = ()
) -> list[str]:
    """The files a node fetches to load the folder with ``variant``.

    A pipeline (``components``: its model_index.json folders): model_index.json, then per
    component folder its other files (configs, tokenizer) and the weights of the variant, or the
    plain ones where it has no fp16 files. A single model (``components`` None): the root's files,
    the same way. ``skip_weights_of``: folders whose weights are not loaded (the pipeline's own
    vae when --vae replaces it).
    """
    names = sorted(set(files))
    chosen: list[str] = ["model_index.json"] if components is not None and "model_index.json" in names else []
    skipped = set(skip_weights_of)
    for folder, group in sorted(folders(names, components).items()):
        chosen += [n for n in group if not is_weight_file(n)]
        if folder in skipped:
            continue
        fp16 = _weights(group, _FP16) if variant == "fp16" else set()
        chosen += sorted(fp16 or _weights(group, _PLAIN))
    return sorted(chosen)


def hub_allow_patterns(names: Iterable[str]) -> list[str]:
    """``snapshot_download(allow_patterns=...)`` that match exactly ``names``: the Hub matches them
    with fnmatch, so ``*``, ``?`` and ``[`` in a name are escaped ("[[]")."""
    return [glob.escape(n) for n in sorted(names)]
