"""A row's img2img and LoRA inputs: its init image reference, strength and LoRA name.

Read with the row's other columns (workers/rows.py) and checked as their flags are, so a bad
value fails its row alone, with the column, the value and the rule in the error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from turbobatch.spec.job import JobSpec, denoising_steps
from turbobatch.workers.row_images import image_reference

if TYPE_CHECKING:
    from turbobatch.workers.rows import Row


def per_row_inputs(row: Row, columns: dict[str, list[Any]], i: int, spec: JobSpec) -> str | None:
    """Set ``row.init``, ``row.strength`` and ``row.lora`` from row ``i``; the error, or None."""
    if spec.init_image_column:
        row.init = columns[spec.init_image_column][i]
        row.strength, error = row_strength(columns, i, spec)
        if error:
            return error
    if spec.lora_column:
        row.lora, error = row_lora(columns[spec.lora_column][i], spec)
        if error:
            return error
    return None


def row_strength(columns: dict[str, list[Any]], i: int, spec: JobSpec) -> tuple[float | None, str | None]:
    """The row's strength (its column's, or the job's when null) or why it is not valid."""
    raw = columns[spec.strength_column][i] if spec.strength_column else None
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return spec.strength, None
    column = spec.strength_column
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0.0 <= raw <= 1.0:
        return None, f"strength column {column!r}: {raw!r} is not a number in [0.0, 1.0]"
    steps_vary = spec.steps_column or any(name == "steps" for name, _ in spec.sweep or [])
    if not steps_vary and denoising_steps(spec.steps, float(raw)) < 1:
        return None, (
            f"strength column {column!r}: {raw} with --steps {spec.steps} runs no denoising step; "
            "img2img needs steps * strength >= 1"
        )
    return float(raw), None


def row_lora(raw: Any, spec: JobSpec) -> tuple[str | None, str | None]:
    """The row's LoRA name (None: no LoRA) or why it names none of the job's."""
    if raw is None or raw == "":
        return None, None
    if raw not in spec.lora_names:
        return (
            None,
            f"lora column {spec.lora_column!r}: {raw!r} is not one of the job's LoRAs ({', '.join(spec.lora_names)})",
        )
    return raw, None


def batch_variant(row: Row, params: Any, img2img_start: Callable[[int, float], int]) -> tuple[Any, ...]:
    """What besides its sampling parameters a row's pipeline call shares with its batch-mates:
    the img2img start step by the family's rule (``Family.img2img_start``: rows whose strengths
    start at one step share a call; None without an init image; when no step would run the rule
    raises, the row gets a group of its own and the sampler fails it) and the LoRA."""
    start: Any = None
    if row.strength is not None:
        try:
            start = img2img_start(params.steps, row.strength)
        except ValueError:
            start = ("none", row.strength)
    return start, row.lora


def lora_label(loras: list[list[Any]]) -> str:
    """LoRAs as metadata records them: ``name=source:scale``, joined by ``;``."""
    return ";".join(f"{name}={source}:{scale:g}" for name, source, scale in loras)


def img2img_lora_fields(row: Row, spec: JobSpec) -> dict[str, Any]:
    """The img2img and LoRA metadata fields of one image (None where the job does not use them)."""
    used = bool(spec.init_image_column)
    size = row.init_size or (None, None)
    if spec.lora_column:
        lora = lora_label([entry for entry in spec.lora if entry[0] == row.lora]) or None
    else:
        lora = lora_label(spec.lora) if spec.lora else None
    return {
        "init_image": image_reference(row.init) if used else None,
        "init_width": size[0],
        "init_height": size[1],
        "strength": row.strength if used else None,
        "resize_mode": spec.resize_mode if used else None,
        "lora": lora,
    }
