"""Several images per input row: images per prompt x sweep combinations, in one fixed order.

Every input row (global index ``g``, in plan order) makes ``P = C * N`` images: ``C`` sweep
combinations (1 without a sweep) times ``N`` images per prompt (``--images-per-prompt``). The
job's images are numbered in one order, the image index:

    i = (g * C + c) * N + j        so   g = i // (C * N),   c = (i // N) % C,   j = i % N

Combinations count in the sweep's declared order with the last name varying fastest, as nested
loops over the names in order (``itertools.product``): for ``steps: [1, 2]`` then
``style: [ink, oil]``, c = 0..3 is (1, ink), (1, oil), (2, ink), (2, oil). Nothing is ever
materialized: a shard is a range of image indices (jobs/prepare/plan.py), each index maps back to its
(row, combination, j) by this arithmetic, and a worker reads only the rows its range needs.

Seeds: image ``j`` of a row takes ``s + j`` when the row has its own seed ``s``, else
``job seed + g * N + j`` (N = 1 gives the one-image seeds). The combination is not part of the
seed: every cell of a grid starts from the same noise, so cells differ only by what was swept.

Keys: the row key alone when a row makes one image; ``<row key>_<j>`` with N > 1 and no sweep;
``<row key>_<c>_<j>`` whenever there is a sweep (even with N = 1), c and j in decimal, c
zero-padded to the digits of the largest combination index ``C - 1`` (12 combinations: ``00`` to
``11``), so a row's keys sort in combination order (``_02_0`` before ``_10_0``). Within a job every
key has the same number of ``_<digits>`` suffixes and row keys are unique, so keys are unique and
name their image for good (a redone shard rewrites the same names).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from turbobatch.errors import JobError
from turbobatch.spec import sampling
from turbobatch.spec.sampling import MAX_SEED

if TYPE_CHECKING:
    from turbobatch.spec.job import JobSpec

MAX_IMAGES_PER_PROMPT = 100_000
MAX_COMBINATIONS = 1_000_000
SWEEP_PREFIX = "sweep_"  # metadata column of a swept name: sweep_<name>
_SAMPLING_TYPES = {"steps": pa.int32(), "guidance_scale": pa.float64(), "width": pa.int32(), "height": pa.int32()}

Sweep = list[list[Any]]  # [[name, [value, ...]], ...] in declared order: the spec's canonical form


@dataclass(frozen=True)
class Expansion:
    """A job's expansion: how many images each row makes, and which is which."""

    images_per_prompt: int
    sweep: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    @classmethod
    def of(cls, spec: JobSpec) -> Expansion:
        return cls(spec.images_per_prompt, tuple((name, tuple(values)) for name, values in spec.sweep or ()))

    @property
    def combinations(self) -> int:
        return math.prod(len(values) for _, values in self.sweep)

    @property
    def per_row(self) -> int:
        return self.combinations * self.images_per_prompt

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.sweep)

    def locate(self, image_index: int) -> tuple[int, int, int]:
        """Image index -> (global index of its row, combination, j)."""
        rest, j = divmod(image_index, self.images_per_prompt)
        g, c = divmod(rest, self.combinations)
        return g, c, j

    def index(self, global_index: int, combination: int, j: int) -> int:
        return (global_index * self.combinations + combination) * self.images_per_prompt + j

    def values(self, combination: int) -> dict[str, Any]:
        """The swept values of a combination, name -> value, in declared order (last name fastest)."""
        chosen: dict[str, Any] = {}
        for name, values in reversed(self.sweep):
            combination, k = divmod(combination, len(values))
            chosen[name] = values[k]
        return dict(reversed(chosen.items()))

    @property
    def combination_width(self) -> int:
        """Digits of the largest combination index: keys pad ``c`` to it so they sort in rendering order."""
        return len(str(self.combinations - 1))

    def key(self, row_key: str, combination: int, j: int) -> str:
        if self.sweep:
            return f"{row_key}_{combination:0{self.combination_width}d}_{j}"
        return f"{row_key}_{j}" if self.images_per_prompt > 1 else row_key

    @staticmethod
    def seed(first_seed: int, j: int) -> tuple[int | None, str | None]:
        """Image j's seed from its row's first (``s``, or ``job seed + g * N``): ``first + j``."""
        seed = first_seed + j
        if seed >= MAX_SEED:
            return None, f"seed {first_seed} + {j} (image {j} of the row) is outside [0, 2**63)"
        return seed, None


def images_per_row(spec: JobSpec) -> int:
    return Expansion.of(spec).per_row


def sweep_schema(spec: JobSpec) -> pa.Schema:
    """The metadata columns of the sweep: ``sweep_<name>`` per swept name, typed (sampling
    parameters as their metadata columns; template values string, int64 or float64)."""
    return pa.schema([pa.field(SWEEP_PREFIX + name, _value_type(name, values)) for name, values in spec.sweep or ()])


def _value_type(name: str, values: list[Any]) -> pa.DataType:
    if name in _SAMPLING_TYPES:
        return _SAMPLING_TYPES[name]
    if all(isinstance(v, str) for v in values):
        return pa.string()
    return pa.int64() if all(isinstance(v, int) for v in values) else pa.float64()


# -- the sweep as given (YAML mapping, --sweep flags) -> its canonical form ----------------------
def normalize_sweep(value: Any) -> Sweep | None:
    """A sweep as YAML (``{name: [values]}``), flags (``["steps=1,2", ...]``) or the canonical
    ``[[name, [values]], ...]`` give it -> canonical, with sampling values typed and checked as
    their flags are; None for no sweep. JobError for an empty list, a repeated name or value, a
    value out of range, or template values that are not text or numbers."""
    if value is None or value == {} or value == []:
        return None
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = [_parse_flag(item) if isinstance(item, str) else _pair(item) for item in value]
    else:
        raise JobError(
            f"--sweep: {value!r} is not valid; expected a mapping of name: [values] (YAML) or --sweep NAME=V1,V2 flags"
        )
    sweep: Sweep = []
    for raw_name, values in items:
        name = _name(raw_name)
        if name in (n for n, _ in sweep):
            raise JobError(f"--sweep: {name!r} is given twice; give each name once, with all its values")
        sweep.append([name, _values(name, values)])
    combinations = math.prod(len(values) for _, values in sweep)
    if combinations > MAX_COMBINATIONS:
        raise JobError(f"--sweep: {combinations:,} combinations; at most {MAX_COMBINATIONS:,} are supported")
    return sweep


def merge_sweeps(base: Any, override: Any) -> Sweep | None:
    """The YAML file's sweep with the flags' on top: a name given by a flag takes the flag's
    values (in the file's place); names only the flags give come after the file's."""
    merged = {name: values for name, values in normalize_sweep(base) or []}
    merged.update({name: values for name, values in normalize_sweep(override) or []})
    return normalize_sweep(merged)


def check_sweep_names(sweep: Sweep | None, template_fields: tuple[str, ...]) -> None:
    """Each swept name is a sampling parameter or a field of the prompt template."""
    for name, _ in sweep or []:
        if name not in sampling.NAMES and name not in template_fields:
            fields = ", ".join(template_fields) if template_fields else "none: no --prompt-template"
            raise JobError(
                f"--sweep: unknown name {name!r}; valid names are the sampling parameters "
                f"{', '.join(sampling.NAMES)} and the prompt template's fields ({fields})"
            )


def _parse_flag(text: str) -> tuple[str, list[str]]:
    name, eq, values = text.partition("=")
    if not eq or not name.strip():
        raise JobError(f"--sweep: {text!r} is not valid; expected NAME=V1,V2,... (e.g. steps=1,2,4)")
    return name, [v.strip() for v in values.split(",")] if values.strip() else []


def _pair(item: Any) -> tuple[Any, Any]:
    if not isinstance(item, (list, tuple)) or len(item) != 2:
        raise JobError(f"--sweep: {item!r} is not valid; expected NAME=V1,V2 or [name, [values]]")
    return item[0], item[1]


def _name(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise JobError(f"--sweep: {raw!r} is not a valid name; expected a sampling parameter or a template field")
    name = raw.strip()
    if name.replace("-", "_") in sampling.NAMES:
        name = name.replace("-", "_")  # guidance-scale, as the flag is spelled
    if name == "prompt":
        raise JobError(
            "--sweep: 'prompt' cannot be swept ({prompt} in a template is the prompt column); "
            "name the template field otherwise, e.g. {subject}"
        )
    return name


def _values(name: str, values: Any) -> list[Any]:
    if not isinstance(values, (list, tuple)):
        raise JobError(f"--sweep {name}: {values!r} is not a list of values; expected e.g. {name}: [a, b]")
    if not values:
        raise JobError(f"--sweep {name}: the list of values is empty; give at least one value")
    if name in sampling.NAMES:
        typed = [sampling.coerce(name, v) for v in values]
        for v in typed:
            if (why := sampling.problem(name, v)) is not None:
                raise JobError(f"--sweep {name}: {why}")
    else:
        typed = list(values)
        kinds = {"text" if isinstance(v, str) else "number" if _is_number(v) else "other" for v in typed}
        if "other" in kinds or len(kinds) > 1:
            raise JobError(
                f"--sweep {name}: {values!r}: a template field's values must all be text or all be finite numbers"
            )
    repeated = [v for i, v in enumerate(typed) if v in typed[:i]]
    if repeated:
        raise JobError(f"--sweep {name}: {repeated[0]!r} is listed twice; each value would render the same images")
    return typed


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
