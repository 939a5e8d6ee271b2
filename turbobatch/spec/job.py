"""JobSpec: the job as the user asked for it, validated once, before any work starts.

CLI flags and a YAML file (same field names) become one ``JobSpec``. ``validate`` checks every
field and raises :class:`JobError` naming the flag, the value and what is valid. Fields left
None ("the model's", "the cluster's") are filled by the driver into a ``ResolvedJob``
(spec/resolved.py), the type the actors receive.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from turbobatch.errors import JobError, MissingArgument
from turbobatch.spec import sampling
from turbobatch.spec.expand import MAX_IMAGES_PER_PROMPT, check_sweep_names, merge_sweeps, normalize_sweep
from turbobatch.spec.lora import normalize_loras
from turbobatch.spec.sampling import MAX_SEED, SamplingParams
from turbobatch.spec.template import Template

DTYPES = ("float16", "bfloat16", "float32")
DEVICES = ("cuda", "cpu")
CONTROL_PREPROCESS = ("none", "canny")
WEIGHTS = ("pretrained", "random")
# Which weight files load (--variant): "auto" picks fp16 files (half the bytes to fetch) when the
# job renders in float16 or bfloat16 and the model has them; models/variants.py decides.
VARIANTS = ("auto", "fp16", "none")
# What the driver sets from --variant and each model's listing (spec/resolved.py ResolvedJob): a
# YAML file naming one of them is told so.
SET_FROM_VARIANT = ("model_variant", "vae_variant", "controlnet_variant", "sources")
# torch.compile modes for the UNet (--compile); "off" compiles nothing.
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
# The worker's speed changes (--speedups; implementations in workers/speedups/registry.py), each measured
# alone and together by benchmarks/gpu.py. Like --batch-size they may change low bits of images
# (within 1 level), never what an image shows, so a resume may change them. The default holds
# what measured faster: fold_upsample was 0.91x on CPU (oneDNN's transposed convolution is
# slower than its convolution) and the GPU-only ones await a GPU measurement (docs/BENCHMARKS.md).
SPEEDUPS = (
    "overlap",
    "fold_upsample",
    "fused_norms",
    "unet_fused_norms",
    "transformer_fused_norms",
    "channels_last",
    "cudnn_benchmark",
    "compile_decoder",
)
DEFAULT_SPEEDUPS = ("overlap",)
FORMATS = ("tar", "files", "parquet")
IMAGE_FORMATS = ("png", "jpeg", "webp")
IMAGE_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
DEFAULT_QUALITY = {"jpeg": 95, "webp": 90}


@dataclass
class JobSpec:
    """One render job. Field names double as YAML keys; ``--flag-name`` maps to ``flag_name``."""

    input: str = ""
    output: str = ""
    model: str = "stabilityai/sd-turbo"
    steps: int | None = None  # None: the model family's default (models/families.py), set by resolve_spec
    guidance_scale: float | None = None  # None: the family's default
    height: int | None = None  # None: the model's native size
    width: int | None = None
    batch_size: int = 8
    dtype: str | None = None  # None: float16 on CUDA, float32 on CPU
    workers: int | None = None  # the most render actors; None: GPUs in the Ray cluster / worker_gpus, else 1
    min_workers: int = 1  # actors ready before rendering starts; the others join as they start
    worker_gpus: float | None = None  # per actor; None: 1 on CUDA (0.5: two actors share a GPU)
    worker_cpus: float | None = None  # per actor; None: 1 on CUDA, the cluster's CPUs / workers on CPU
    stall_timeout: float = 1800.0  # seconds with no ready actor, or no commit while shards run: exit 1
    shard_size: int = 1000
    format: str = "tar"
    image_format: str = "png"
    quality: int | None = None  # None: jpeg 95, webp 90; not used by png
    seed: int = 0
    prompt_column: str = "prompt"
    negative_prompt_column: str | None = None
    seed_column: str = "seed"
    key_column: str | None = None
    # Input columns copied into every output row: "a,b", or "*" for every column the job does not
    # use otherwise. The driver resolves it (output/columns.py) to the column names, and sets
    # kept_schema to their Arrow types, the same for every shard.
    keep_columns: str | None = None
    # Several images per row (spec/expand.py): N per prompt, times the sweep's combinations.
    images_per_prompt: int = 1
    prompt_template: str | None = None  # "a {style} photo of a {subject}": fields name columns (spec/template.py)
    # {name: [values]} as given; validate() makes it [[name, [values]], ...] in declared order (the
    # order is part of the job: it numbers the combinations). Names: sampling parameters, template fields.
    sweep: Any = None
    # Per-row sampling parameters: a column's value (null: the job's) overrides the flag for its row.
    steps_column: str | None = None
    guidance_scale_column: str | None = None
    width_column: str | None = None
    height_column: str | None = None
    device: str | None = None  # None: cuda when the Ray cluster has GPUs, else cpu
    weights: str = "pretrained"  # "random": full-size architecture from bundled configs, for speed work
    vae: str | None = None  # swap the pipeline's VAE (e.g. an fp16-fixed SDXL VAE, or TAESD)
    compile: str = "off"  # torch.compile mode for the UNet; like batch_size, may change only low bits
    speedups: str = "default"  # comma-separated SPEEDUPS, "default" or "none"; normalized by validate()
    controlnet: str | None = None
    control_image_column: str | None = None  # path/URL (relative to the dataset folder) or image bytes
    control_preprocess: str = "none"
    controlnet_scale: float = 1.0
    # -- img2img and LoRA: validated in _validate_img2img_lora ------------------------
    init_image_column: str | None = None  # path/URL (relative to the dataset folder) or image bytes
    strength: float = 0.5  # how far the init image is noised: 1.0 ignores it; steps * strength >= 1
    strength_column: str | None = None  # per-row strength (null: --strength)
    resize_mode: str = "center_crop"  # how an init image of another size becomes the render size
    lora: Any = None  # ["[NAME=]SOURCE[:SCALE]", ...] as given; validate() makes it [[name, source, scale], ...]
    lora_column: str | None = None  # per-row LoRA name (null: none); the job's LoRAs are then not fused
    variant: str = "auto"  # weight files of --model, --vae and --controlnet: auto, fp16 or none
    overwrite: bool = False
    max_retries: int = 3  # infrastructure failures (worker death, storage timeouts) retried per shard
    max_failed_shards: int = 0  # more failed shards than this: exit code 1
    # fsspec storage options (credentials, endpoint): for both sides, then per side on top.
    # repr=False keeps secrets out of tracebacks and logs; spec.json gets redacted copies.
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
    input_storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
    output_storage_options: dict[str, Any] = field(default_factory=dict, repr=False)

    # Fields that change what is written (pixels, names, layout): a resume must not mix them.
    OUTPUT_FIELDS = (
        "model",
        "steps",
        "guidance_scale",
        "height",
        "width",
        "dtype",
        "device",
        "seed",
        "prompt_column",
        "negative_prompt_column",
        "seed_column",
        "key_column",
        "keep_columns",
        "shard_size",
        "format",
        "image_format",
        "quality",
        "weights",
        "vae",
        "controlnet",
        "control_image_column",
        "control_preprocess",
        "controlnet_scale",
        "images_per_prompt",
        "prompt_template",
        "sweep",
        "steps_column",
        "guidance_scale_column",
        "width_column",
        "height_column",
        "init_image_column",
        "strength",
        "strength_column",
        "resize_mode",
        "lora",
        "lora_column",
    )

    @classmethod
    def from_sources(cls, yaml_values: dict[str, Any], flag_values: dict[str, Any]) -> JobSpec:
        """Defaults, then the YAML file, then flags that were given on the command line."""
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for raw_key, value in yaml_values.items():
            key = str(raw_key).replace("-", "_")
            if key in SET_FROM_VARIANT:
                raise JobError(
                    f"--config: field {raw_key!r} is set by the job itself (from --variant and the "
                    "model's files); use variant: auto, fp16 or none"
                )
            if key not in known:
                valid = ", ".join(sorted(known))
                raise JobError(f"--config: unknown field {raw_key!r}; valid fields: {valid}")
            values[key] = value
        if "sweep" in values and "sweep" in flag_values:  # --sweep flags on top of the file's sweep, per name
            flag_values = {**flag_values, "sweep": merge_sweeps(values["sweep"], flag_values["sweep"])}
        values.update(flag_values)
        spec = cls(**values)
        spec.validate()
        return spec

    # -- validation --------------------------------------------------------------------
    def validate(self) -> None:
        _require_text("input", self.input)
        _require_text("output", self.output)
        _require_text("model", self.model)
        for name in sampling.NAMES:
            value = getattr(self, name)
            if value is not None:  # None: the model's own (native size, family defaults)
                _require_sampling(name, value)
        _require_int("batch-size", self.batch_size, 1, 4096)
        _require_choice("dtype", self.dtype, DTYPES, optional=True)
        _require_choice("device", self.device, DEVICES, optional=True)
        _require_choice("weights", self.weights, WEIGHTS)
        _require_choice("compile", self.compile, COMPILE_MODES)
        self.speedups = normalize_speedups(self.speedups)
        if self.weights == "random" and (self.controlnet or self.vae):
            raise JobError(
                "--weights random: builds the whole pipeline from bundled configs; drop --controlnet and --vae"
            )
        self._validate_workers()
        _require_int("shard-size", self.shard_size, 1, 1_000_000)
        _require_choice("format", self.format, FORMATS)
        _require_choice("image-format", self.image_format, IMAGE_FORMATS)
        if self.quality is not None:
            if self.image_format == "png":
                raise JobError("--quality: applies to jpeg and webp only; png is lossless")
            _require_int("quality", self.quality, 1, 100)
        _require_int("seed", self.seed, 0, MAX_SEED - 1)
        _require_text("prompt-column", self.prompt_column)
        _require_text("seed-column", self.seed_column)
        self._validate_controlnet()
        _require_choice("variant", self.variant, VARIANTS)
        for name in ("negative_prompt_column", "key_column"):
            value = getattr(self, name)
            if value is not None:
                _require_text(name.replace("_", "-"), value)
        self.keep_columns = normalize_keep_columns(self.keep_columns)
        self._validate_expansion()
        self._validate_img2img_lora()  # after the sweep is normalized: it checks swept step counts
        _require_int("max-retries", self.max_retries, 0, 100)
        _require_int("max-failed-shards", self.max_failed_shards, 0, 10_000_000)
        if not isinstance(self.overwrite, bool):
            raise JobError(f"--overwrite: {self.overwrite!r} is not true or false")
        for name in ("storage_options", "input_storage_options", "output_storage_options"):
            if not isinstance(getattr(self, name), dict):
                raise JobError(f"--{name.replace('_', '-')}: expected a mapping of option: value (a JSON object)")

    def _validate_workers(self) -> None:
        if self.workers is not None:
            _require_int("workers", self.workers, 1, 100_000)
        _require_int("min-workers", self.min_workers, 1, 100_000)
        if self.workers is not None and self.min_workers > self.workers:
            raise JobError(
                f"--min-workers: {self.min_workers} is more than --workers {self.workers}; "
                "expected at most the number of workers"
            )
        if self.worker_gpus is not None:
            _require_number("worker-gpus", self.worker_gpus, 0.0001, 64)
            if self.worker_gpus > 1 and not float(self.worker_gpus).is_integer():
                raise JobError(
                    f"--worker-gpus: {self.worker_gpus} is not valid; expected a fraction below 1 "
                    "(actors share a GPU) or a whole number of GPUs"
                )
        if self.worker_cpus is not None:
            _require_number("worker-cpus", self.worker_cpus, 0.0001, 1024)
        _require_number("stall-timeout", self.stall_timeout, 1, 7 * 24 * 3600)

    def _validate_expansion(self) -> None:
        _require_int("images-per-prompt", self.images_per_prompt, 1, MAX_IMAGES_PER_PROMPT)
        template = Template.parse(self.prompt_template) if self.prompt_template is not None else None
        self.sweep = normalize_sweep(self.sweep)
        check_sweep_names(self.sweep, template.fields if template else ())
        swept = {name for name, _ in self.sweep or []}
        for name, column in self.sampling_columns.items():
            flag = f"{name.replace('_', '-')}-column"
            _require_text(flag, column)
            if name in swept:
                raise JobError(
                    f"--{flag}: {column!r} and --sweep {name} both set {name}; a row's value and the "
                    f"sweep's cannot both apply: drop one"
                )

    def _validate_controlnet(self) -> None:
        for name in ("vae", "controlnet", "control_image_column"):
            value = getattr(self, name)
            if value is not None:
                _require_text(name.replace("_", "-"), value)
        _require_choice("control-preprocess", self.control_preprocess, CONTROL_PREPROCESS)
        _require_number("controlnet-scale", self.controlnet_scale, 0.0, 10.0)
        if self.controlnet and not self.control_image_column:
            raise JobError("--control-image-column: required with --controlnet (the column of control images)")
        if self.control_image_column and not self.controlnet:
            raise JobError(f"--control-image-column: {self.control_image_column!r} given but no --controlnet to use it")

    # -- img2img and LoRA ------------------------------------------------------
    def _validate_img2img_lora(self) -> None:
        """--init-image-column / --strength / --resize-mode and --lora / --lora-column. Whether the
        model's family has img2img is checked with its configs (models/img2img.py)."""
        for name in ("init_image_column", "strength_column", "lora_column"):
            value = getattr(self, name)
            if value is not None:
                _require_text(name.replace("_", "-"), value)
        _require_number("strength", self.strength, 0.0, 1.0)
        _require_choice("resize-mode", self.resize_mode, RESIZE_MODES)
        if self.strength_column and not self.init_image_column:
            raise JobError(f"--strength-column: {self.strength_column!r} given but no --init-image-column to use it")
        if self.init_image_column and self.controlnet:
            raise JobError("--init-image-column: img2img with a ControlNet is not supported; drop one of them")
        if self.init_image_column:  # steps left to the model: checked with its default (models/img2img.py)
            if self.steps is not None:
                check_denoises(self.steps, self.strength, "--steps", "--strength")
            for name, values in self.sweep or []:
                if name == "steps":
                    for steps in values:
                        check_denoises(steps, self.strength, "--sweep steps", "--strength")
        self.lora = normalize_loras(self.lora)
        if self.lora_column and not self.lora:
            raise JobError(f"--lora-column: {self.lora_column!r} given but no --lora for its rows to pick from")

    @property
    def lora_names(self) -> list[str]:
        """The names a --lora-column value may take, in --lora order."""
        return [name for name, _, _ in self.lora or []]

    # -- derived values ----------------------------------------------------------------
    def sampling(self) -> SamplingParams:
        """The job's sampling parameters (set once resolved: spec/resolved.py)."""
        # A spec the driver did not resolve (tests, benchmarks) samples with the SD turbo defaults.
        steps = self.steps if self.steps is not None else 1
        guidance = self.guidance_scale if self.guidance_scale is not None else 0.0
        return SamplingParams(steps, guidance, self.height, self.width)

    @property
    def sampling_columns(self) -> dict[str, str]:
        """Sampling parameter -> the input column that sets it per row (--steps-column, ...)."""
        columns = {name: getattr(self, f"{name}_column") for name in sampling.NAMES}
        return {name: column for name, column in columns.items() if column is not None}

    @property
    def image_extension(self) -> str:
        return IMAGE_EXTENSIONS[self.image_format]

    @property
    def effective_quality(self) -> int | None:
        return self.quality if self.quality is not None else DEFAULT_QUALITY.get(self.image_format)

    @property
    def speedup_set(self) -> frozenset[str]:
        return frozenset(normalize_speedups(self.speedups).split(",")) - {"none"}

    def input_options(self) -> dict[str, Any]:
        return {**self.storage_options, **self.input_storage_options}

    def output_options(self) -> dict[str, Any]:
        return {**self.storage_options, **self.output_storage_options}

    def output_fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.OUTPUT_FIELDS}

    def output_hash(self) -> str:
        blob = json.dumps(self.output_fields(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_public_dict(self) -> dict[str, Any]:
        """The spec with every secret-looking storage option replaced: safe for spec.json and logs."""
        values = self.to_dict()
        for name in ("storage_options", "input_storage_options", "output_storage_options"):
            values[name] = redact(values[name])
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> JobSpec:
        return cls(**values)


RESIZE_MODES = ("center_crop", "fit", "stretch")


def denoising_steps(steps: int, strength: float) -> int:
    """Steps an img2img call runs: diffusers' ``get_timesteps`` (``int(steps * strength)``)."""
    return min(int(steps * strength), steps)


def check_denoises(steps: int, strength: float, steps_flag: str, strength_flag: str) -> None:
    """JobError when no denoising step would run (``steps * strength < 1``)."""
    if denoising_steps(steps, strength) < 1:
        raise JobError(
            f"{strength_flag} {strength} with {steps_flag} {steps}: steps * strength = {steps * strength:g} "
            "runs no denoising step; img2img needs steps * strength >= 1 (raise the strength or the steps)"
        )


KEEP_ALL = "*"


def normalize_keep_columns(value: Any) -> str | None:
    """``--keep-columns`` as given (comma list, YAML list, "*") -> "a,b" without repeats, "*", or
    None for none; JobError for an empty name or "*" mixed with names."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        names = [n.strip() for n in value.split(",")]
    elif isinstance(value, (list, tuple)) and all(isinstance(n, str) for n in value):
        names = [n.strip() for n in value]
        if any("," in n for n in names):
            raise JobError(f"--keep-columns: {value!r}: column names with a comma cannot be kept")
    else:
        raise JobError(f"--keep-columns: {value!r} is not valid; expected column names, comma-separated, or '*'")
    if "" in names:
        raise JobError(f"--keep-columns: {value!r} has an empty column name")
    if KEEP_ALL in names and len(names) > 1:
        raise JobError(f"--keep-columns: {value!r}: '*' (every input column) stands alone")
    return ",".join(dict.fromkeys(names))


def normalize_speedups(value: Any) -> str:
    """``--speedups`` as given (comma list, YAML list, "default", "none") -> the canonical comma
    list in SPEEDUPS order, or "none"; JobError naming an unknown change."""
    if isinstance(value, str):
        names = value.split(",")
    elif isinstance(value, (list, tuple)):
        names = list(value)
    else:
        raise JobError(f"--speedups: {value!r} is not valid; expected a comma-separated list of {', '.join(SPEEDUPS)}")
    chosen: set[str] = set()
    for raw in names:
        name = str(raw).strip().replace("-", "_")
        if name == "default":
            chosen.update(DEFAULT_SPEEDUPS)
        elif name in SPEEDUPS:
            chosen.add(name)
        elif name not in ("none", ""):
            raise JobError(
                f"--speedups: unknown change {raw!r}; choose from {', '.join(SPEEDUPS)}, or default, or none"
            )
    return ",".join(n for n in SPEEDUPS if n in chosen) or "none"


_SECRET_KEY = re.compile(r"secret|token|password|passwd|credential|key|session|signature|sas|auth|cert", re.I)
REDACTED = "***"


def redact(options: Any) -> Any:
    """Storage options with the value of every secret-looking key (at any depth) replaced."""
    if isinstance(options, dict):
        return {k: REDACTED if _SECRET_KEY.search(str(k)) else redact(v) for k, v in options.items()}
    if isinstance(options, list):
        return [redact(v) for v in options]
    return options


def _require_text(flag: str, value: Any) -> None:
    if flag in ("input", "output") and not value:  # the positional arguments
        raise MissingArgument(flag)
    if not isinstance(value, str) or not value.strip():
        label = flag if flag in ("input", "output") else f"--{flag}"
        raise JobError(f"{label}: {value!r} is not valid; expected a non-empty string")


def _require_sampling(name: str, value: Any) -> None:
    if (why := sampling.problem(name, value)) is not None:
        raise JobError(f"--{name.replace('_', '-')}: {why}")


def _require_int(flag: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise JobError(f"--{flag}: {value!r} is not an integer; expected an integer in [{low}, {high}]")
    if not low <= value <= high:
        raise JobError(f"--{flag}: {value} is out of range; expected an integer in [{low}, {high}]")


def _require_number(flag: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise JobError(f"--{flag}: {value!r} is not a finite number in [{low}, {high}]")
    if not low <= value <= high:
        raise JobError(f"--{flag}: {value} is out of range; expected a number in [{low}, {high}]")


def _require_choice(flag: str, value: Any, choices: tuple[str, ...], optional: bool = False) -> None:
    if value is None and optional:
        return
    if value not in choices:
        raise JobError(f"--{flag}: {value!r} is not valid; choose one of {', '.join(choices)}")


@dataclass(frozen=True)
class RunOptions:
    """How to run a job, beside what the job is (JobSpec): a dry run, a calibration, its estimate."""

    dry_run: bool = False
    calibrate: bool = False
    gpu_hour_price: float | None = None
    gpu_kind: str | None = None
