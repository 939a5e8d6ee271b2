"""The sampling parameters an image may vary in: steps, guidance scale, width and height.

A job sets them once (flags / YAML); a sweep (spec/expand.py) or a per-row column
(``--steps-column``, ...) varies them per image. All three go through the one rule set here,
so a value a flag would refuse is refused the same way in a sweep (a job error) and in a row
(that row's error), with the same words.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

MAX_SEED = 2**63  # seeds live in [0, 2**63)

# name -> (kind, low, high): the valid values of each parameter.
RANGES: dict[str, tuple[type, float, float]] = {
    "steps": (int, 1, 100),
    "guidance_scale": (float, 0.0, 100.0),
    "width": (int, 8, 4096),
    "height": (int, 8, 4096),
}
NAMES = tuple(RANGES)  # the order metadata and docs list them in
SIZE_NAMES = ("width", "height")  # must be multiples of 8 (the VAE needs it)


@dataclass(frozen=True)
class SamplingParams:
    """What one pipeline call samples with; images of a batch share all four (workers/batches.py)."""

    steps: int
    guidance_scale: float
    height: int
    width: int

    def replace(self, values: dict[str, Any]) -> SamplingParams:
        return dataclasses.replace(self, **values)


def problem(name: str, value: Any) -> str | None:
    """Why ``value`` is not a valid ``name``, in the words flag errors use; None when it is valid.

    Integers must be ints (not bools, not floats); the guidance scale any finite number.
    """
    kind, low, high = RANGES[name]
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{value!r} is not an integer; expected an integer in [{low}, {high}]"
        if not low <= value <= high:
            return f"{value} is out of range; expected an integer in [{low}, {high}]"
        if name in SIZE_NAMES and value % 8:
            return f"{value} is not a multiple of 8 (the VAE needs it)"
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"{value!r} is not a finite number in [{low}, {high}]"
    if not low <= value <= high:
        return f"{value} is out of range; expected a number in [{low}, {high}]"
    return None


def coerce(name: str, value: Any) -> Any:
    """A value as data holds it (a float 4.0 for 4 steps, the text "1.5") -> the parameter's type,
    or the value unchanged when it cannot be one (``problem`` then says why)."""
    kind = RANGES[name][0]
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if kind is int else float(text)
        except ValueError:
            try:
                value = float(text)  # "4.0" is 4 steps, "4.5" is not an integer (said by problem)
            except ValueError:
                return value
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
