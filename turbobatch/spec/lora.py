"""``--lora [NAME=]SOURCE[:SCALE]``, as given on the command line or in YAML, to ``[name, source, scale]``.

Pure parsing: whether a LoRA fits the model is the driver's check (models/lora.py).
"""

from __future__ import annotations

import math
from typing import Any

from turbobatch.errors import JobError


def parse_lora(text: str) -> list[Any]:
    """``[NAME=]SOURCE[:SCALE]`` -> [name, source, scale]. The scale is the text after the last
    colon when it reads as a number (so s3://... and C:... sources survive); the name defaults to
    the source's last path part without ``.safetensors`` (for diffusers' default file name, its folder's)."""
    if not isinstance(text, str) or not text.strip():
        raise JobError(f"--lora: {text!r} is not valid; expected [NAME=]SOURCE[:SCALE]")
    name, eq, rest = text.strip().partition("=")
    if not eq or "/" in name or ":" in name:
        name, rest = "", text.strip()
    source, scale = rest, 1.0
    head, colon, tail = rest.rpartition(":")
    if colon and head:
        try:
            scale = float(tail)
            source = head
        except ValueError:
            pass
    if not math.isfinite(scale) or not -10.0 <= scale <= 10.0:
        raise JobError(f"--lora: {text!r}: scale {scale} is out of range; expected a number in [-10, 10]")
    if not source:
        raise JobError(f"--lora: {text!r} names no source; expected [NAME=]SOURCE[:SCALE]")
    if not name:  # "org/ink", "/l/ink.safetensors", "/l/ink/pytorch_lora_weights.safetensors": "ink"
        parts = source.rstrip("/").split("/")
        generic = len(parts) > 1 and parts[-1] == "pytorch_lora_weights.safetensors"
        name = (parts[-2] if generic else parts[-1]).removesuffix(".safetensors")
    return [name, source, scale]


def normalize_loras(value: Any) -> list[list[Any]] | None:
    """--lora as given (one text, a list of texts, or already [[name, source, scale], ...]) ->
    [[name, source, scale], ...] in the given order, or None; JobError for two LoRAs of one name."""
    if value is None or value == [] or value == "":
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    loras = []
    for item in items:
        if isinstance(item, (list, tuple)) and len(item) == 3:
            name, source, scale = item
            lora = parse_lora(f"{name}={source}:{scale}")
        else:
            lora = parse_lora(item)
        loras.append(lora)
    names = [n for n, _, _ in loras]
    if len(set(names)) != len(names):
        raise JobError(f"--lora: two LoRAs are named alike ({', '.join(names)}); give them names: NAME=SOURCE")
    return loras
