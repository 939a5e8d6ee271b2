"""How long a job will take and what it will cost, from the throughput table (jobs/estimate/throughput.json).

The table holds one render worker's images/s for settings that were measured (docs/BENCHMARKS.md):
model, decoder (the model's VAE or a TAESD-class tiny autoencoder), size, steps, guidance, dtype,
batch size and device kind (``torch.cuda.get_device_name``, or cpu). For a job's settings
``figure_for`` takes the nearest measured figure of the same model (else of a model of the same
architecture) on the same device kind (else on another GPU kind, used as it is) and scales it by
FLOPs per image for what differs in work: size, steps, decoder, classifier-free guidance, a
ControlNet. What cannot be scaled that way (dtype, batch size, CPU threads, GPU kind, the worker's
version) is used as measured. Every difference is named in the figure's notes, so the dry run says
plainly which of the job's settings were not measured and what stands in for them.

``estimate`` turns the figures into wall time (the images spread over the workers), GPU-hours
(wall time x workers x --worker-gpus) and, with ``--gpu-hour-price``, the cost. Start-up (weights,
load, first batch) is not included.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turbobatch.models.families import FAMILY_OF_PIPELINE
from turbobatch.spec import sampling
from turbobatch.spec.expand import Expansion
from turbobatch.spec.job import JobSpec
from turbobatch.spec.sampling import SamplingParams

TABLE_PATH = Path(__file__).with_name("throughput.json")
DECODERS = {"AutoencoderKL": "vae", "AutoencoderTiny": "taesd"}


@functools.cache
def load_table(path: str = str(TABLE_PATH)) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


@dataclass(frozen=True)
class Setting:
    """What one worker's images/s depends on, for one kind of image of the job."""

    model: str  # the model as the job names it
    family: str  # models/families.py: sd, sdxl, z-image, flux2-klein (FLOPs per image)
    scale: str  # "full" or "tiny" (the tiny twins: test models)
    decoder: str  # "vae" or "taesd"
    width: int
    height: int
    steps: int
    guidance_scale: float
    controlnet: bool
    dtype: str
    batch_size: int
    device_kind: str  # "NVIDIA H200", "cpu", ...
    threads: int | None = None  # CPU workers: torch's threads (--worker-cpus)

    @property
    def cfg(self) -> bool:
        return uses_cfg(self.family, self.guidance_scale)

    def describe(self) -> str:
        guidance = f", guidance {self.guidance_scale:g}" if self.guidance_scale else ""
        control = ", ControlNet" if self.controlnet else ""
        return (
            f"{self.model}, {'TAESD decoder' if self.decoder == 'taesd' else 'VAE decoder'}, "
            f"{self.width}x{self.height}, {self.steps} step{'s' * (self.steps != 1)}{guidance}{control}, "
            f"{self.dtype}, batch {self.batch_size}, {self.device_kind}"
        )


@dataclass
class Figure:
    """One worker's images/s for a Setting, and how it was obtained."""

    images_per_s: float
    basis: str  # the measurement it comes from (or "calibrated ...")
    measured: bool  # the table (or a calibration) has exactly this setting
    notes: list[str] = field(default_factory=list)  # each setting that was not measured, and what stood in


def setting_for(
    spec: JobSpec, pipeline_class: str, vae_class: str | None, params: SamplingParams, device_kind: str
) -> Setting:
    """The Setting of a resolved job's images with sampling parameters ``params``."""
    family = _known(spec.model, "family") or FAMILY_OF_PIPELINE.get(pipeline_class, "sd")
    return Setting(
        model=spec.model,
        family=family,
        scale=_known(spec.model, "scale") or "full",
        decoder=DECODERS.get(vae_class or "AutoencoderKL", "vae"),
        width=params.width,
        height=params.height,
        steps=params.steps,
        guidance_scale=params.guidance_scale,
        controlnet=bool(spec.controlnet),
        dtype=spec.dtype,
        batch_size=spec.batch_size,
        device_kind=device_kind,
        threads=int(spec.worker_cpus) if spec.device == "cpu" and spec.worker_cpus else None,
    )


def uses_cfg(family: str, guidance_scale: float) -> bool:
    """Classifier-free guidance (two denoiser passes), as the family's pipeline decides: Z-Image
    above 0, the others above 1 (the step-distilled FLUX.2 klein refuses a scale above 1)."""
    return guidance_scale > (0.0 if family == "z-image" else 1.0)


def tflop_per_image(s: Setting | dict[str, Any], family: str) -> float:
    """The FLOPs rule of the table: text encoders + pixels / size^2 x (steps x denoiser + decode),
    ``size`` the side the family was counted at (512 for the UNet models, 1024 for the DiTs; their
    attention grows faster than pixels, so far from 1024 this is rough)."""
    flops = load_table()["flops_per_image_512"]
    get = s.get if isinstance(s, dict) else lambda k, d=None: getattr(s, k, d)
    f = flops[family]
    cfg = 2 if uses_cfg(family, get("guidance_scale", 0.0)) else 1
    unet = f["unet"] * cfg * (1 + (flops["controlnet_per_unet"] if get("controlnet", False) else 0.0))
    pixels = get("width") * get("height") / f.get("size", 512) ** 2
    return f["text_encoders"] * cfg + pixels * (get("steps") * unet + f["decode"][get("decoder")])


def same_kind(a: str, b: str) -> bool:
    """Device kinds as the same card: "H200" (Ray's accelerator type) is "NVIDIA H200" (torch's name)."""
    norm = lambda k: re.sub(r"[^a-z0-9]", "", k.lower().removeprefix("nvidia"))  # noqa: E731
    return norm(a) == norm(b)


def figure_for(setting: Setting, figures: list[dict[str, Any]] | None = None) -> Figure | None:
    """The table's figure for ``setting`` (measured, or derived from the nearest measured one), or
    None when the table has nothing to derive it from (e.g. a full-size model on CPU)."""
    table = load_table()
    rows = [r for r in (figures if figures is not None else table["figures"]) if r.get("measured")]
    same_scale = [r for r in rows if _known(r["model"], "scale") == setting.scale]
    on_kind = [r for r in same_scale if same_kind(r["device_kind"], setting.device_kind)]
    other_gpu = [r for r in same_scale if r["device_kind"] != "cpu"] if setting.device_kind != "cpu" else []
    candidates = on_kind or other_gpu
    if not candidates:
        return None

    def distance(r: dict[str, Any]) -> tuple:
        return (
            r["model"] != setting.model,
            _known(r["model"], "family") != setting.family,
            r["decoder"] != setting.decoder,
            r["dtype"] != setting.dtype,
            abs(r["steps"] - setting.steps),
            abs(math.log(r["width"] * r["height"] / (setting.width * setting.height))),
            abs(r["batch_size"] - setting.batch_size),
            not same_kind(r["device_kind"], "NVIDIA H200"),
        )

    row = min(candidates, key=distance)
    ratio = tflop_per_image(row, _known(row["model"], "family")) / tflop_per_image(setting, setting.family)
    differences = _differences(setting, row, ratio)
    basis = (
        f"{row['model']}, {row['decoder'].upper()} decoder, {row['width']}x{row['height']}, {row['steps']} "
        f"step(s), {row['dtype']}, batch {row['batch_size']}, {row['device_kind']}{_threads(row)}, "
        f"{row['date']}, {row['worker']}"
    )
    if differences:
        basis = f"derived from {row['images_per_s']:g} images/s measured for {basis}"
    else:
        basis = f"measured for {basis}"
    caveats = []
    if "previous worker" in row.get("worker", ""):
        caveats.append("the figure is the previous worker's (the current worker has not been measured on a GPU yet)")
    return Figure(row["images_per_s"] * ratio, basis, measured=not differences, notes=differences + caveats)


def _threads(row: dict[str, Any]) -> str:
    return f" ({row['threads']} threads)" if row.get("threads") else ""


def _differences(s: Setting, row: dict[str, Any], ratio: float) -> list[str]:
    """What the job does that the measured row did not, each saying what stood in for it."""
    scaled = f"scaled by FLOPs per image (x{ratio:.3g}, turbobatch/jobs/estimate/throughput.json's rule)"
    notes = []
    if row["model"] != s.model:
        how = (
            "the same architecture" if s.family == _known(row["model"], "family") else f"another architecture, {scaled}"
        )
        notes.append(f"model {s.model}: not measured; used {row['model']}'s figure ({how})")
    work = [
        f"{what} (measured: {was})"
        for what, was, differs in (
            (
                f"{s.width}x{s.height}",
                f"{row['width']}x{row['height']}",
                (row["width"], row["height"]) != (s.width, s.height),
            ),
            (f"{s.steps} step(s)", row["steps"], row["steps"] != s.steps),
            (f"the {s.decoder.upper()} decoder", row["decoder"].upper(), row["decoder"] != s.decoder),
            (
                f"guidance {s.guidance_scale:g} (two UNet passes)",
                f"{row['guidance_scale']:g}",
                s.cfg != (row["guidance_scale"] > 1.0),
            ),
            ("a ControlNet (counted as half a UNet per step: an assumption)", "none", s.controlnet),
        )
        if differs
    ]
    if work:
        notes.append(f"not measured: {', '.join(work)}; {scaled}")
    as_is = [
        f"{what} (measured: {was})"
        for what, was, differs in (
            (s.dtype, row["dtype"], s.dtype != row["dtype"]),
            (f"batch size {s.batch_size}", row["batch_size"], s.batch_size != row["batch_size"]),
            (f"{s.threads} CPU threads", row.get("threads"), s.threads is not None and s.threads != row.get("threads")),
            (f"GPU kind {s.device_kind}", row["device_kind"], not same_kind(s.device_kind, row["device_kind"])),
        )
        if differs
    ]
    if as_is:
        notes.append(f"not measured: {', '.join(as_is)}; the measured figure used as it is")
    return notes


def _known(model: str, field_name: str) -> str | None:
    """The table's ``family`` or ``scale`` of a measured model (None for a model it does not list)."""
    known = load_table()["models"].get(model)
    return known[field_name] if known else None


# -- a job's estimate ---------------------------------------------------------------------------
@dataclass
class Estimate:
    images: int  # images still to render
    shards: int  # shards still to render
    workers: int  # render actors that will share them
    worker_gpus: float
    parts: list[tuple[int, Setting, Figure | None]]  # images of each setting, and its figure
    worker_seconds: float | None  # one worker's time for all of them; None: no figure for some
    wall_s: float | None
    gpu_hours: float | None
    price: float | None  # --gpu-hour-price
    notes: list[str] = field(default_factory=list)  # about the job as a whole (per-row columns, GPU kind)

    @property
    def cost(self) -> float | None:
        if self.gpu_hours is None or self.price is None:
            return None
        return self.gpu_hours * self.price

    @property
    def unmeasured(self) -> list[str]:
        """Every note about a setting that was not measured, once."""
        seen = dict.fromkeys([*self.notes, *(n for _, _, f in self.parts if f for n in f.notes)])
        return list(seen)


def job_settings(
    spec: JobSpec, pipeline_class: str, vae_class: str | None, device_kind: str
) -> list[tuple[float, Setting]]:
    """(share of the job's images, Setting) for each sweep combination's sampling parameters."""
    expansion = Expansion.of(spec)
    base = spec.sampling()
    shares: dict[Setting, float] = {}
    for c in range(expansion.combinations):
        swept = {k: v for k, v in expansion.values(c).items() if k in sampling.NAMES}
        setting = setting_for(spec, pipeline_class, vae_class, base.replace(swept), device_kind)
        shares[setting] = shares.get(setting, 0.0) + 1 / expansion.combinations
    return [(share, s) for s, share in shares.items()]


def estimate(
    spec: JobSpec,
    pipeline_class: str,
    vae_class: str | None,
    images: int,
    shards: int,
    device_kind: str,
    price: float | None = None,
    calibrated: Figure | None = None,
    notes: list[str] | None = None,
) -> Estimate:
    """The job's time and cost for ``images`` in ``shards`` still to render on spec.workers workers."""
    notes = list(notes or [])
    for name, column in spec.sampling_columns.items():
        notes.append(
            f"{name} per row from column {column!r}: not read by the dry run; every image is counted "
            f"at --{name.replace('_', '-')} {getattr(spec, name)}"
        )
    parts = []
    for share, setting in job_settings(spec, pipeline_class, vae_class, device_kind):
        figure = calibrated if calibrated is not None else figure_for(setting)
        parts.append((round(images * share), setting, figure))
    if calibrated is not None and len(parts) > 1:
        notes.append(
            "the calibration rendered shard 0, whose images mix the sweep's settings: its figure is used "
            "for all of them"
        )
    workers = max(1, min(spec.workers or 1, shards)) if shards else 0
    gpus = float(spec.worker_gpus or 0)
    if all(f is not None for _, _, f in parts):
        worker_s = sum(n / f.images_per_s for n, _, f in parts)
        longest_shard = max((spec.shard_size / f.images_per_s for _, _, f in parts), default=0.0)
        wall = max(worker_s / workers, min(longest_shard, worker_s)) if workers else 0.0
        gpu_hours = wall * workers * gpus / 3600
    else:
        worker_s = wall = gpu_hours = None
    return Estimate(images, shards, workers, gpus, parts, worker_s, wall, gpu_hours, price, notes)


def format_estimate(e: Estimate) -> list[str]:
    """The estimate's lines for the dry run's report."""
    lines = []
    for n, setting, figure in e.parts:
        what = f"{n:,} images of {setting.describe()}" if len(e.parts) > 1 else setting.describe()
        if figure is None:
            lines.append(
                f"estimate: {what}: no figure (the table has none for {setting.model} on "
                f"{setting.device_kind}, nor one to derive it from); --calibrate measures one"
            )
            continue
        lines.append(f"speed:    {figure.images_per_s:,.2f} images/s per worker for {what} ({figure.basis})")
    if e.worker_seconds is None:
        lines.append("estimate: no time or cost: some of the job's settings have no figure")
    elif e.images == 0:
        lines.append("estimate: nothing left to render")
    else:
        hours = (
            f"{e.gpu_hours:,.2f} GPU-hours"
            if e.worker_gpus
            else f"{e.wall_s * e.workers / 3600:,.3f} worker-hours on CPU (no GPU)"
        )
        lines.append(
            f"estimate: {e.images:,} images on {e.workers} worker(s): {_duration(e.wall_s)} of rendering, "
            f"{hours} (start-up not included: weights, load, first batch)"
        )
        if e.price is not None:
            if e.worker_gpus:
                lines.append(f"cost:     {e.cost:,.2f} at {e.price:g} per GPU-hour")
            else:
                lines.append("cost:     none from --gpu-hour-price: the job renders on CPU")
    lines += [f"note:     {n}" for n in e.unmeasured]
    return lines


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def calibrated_figure(
    setting: Setting, images_per_s: float, images: int, seconds: float, device_kind: str, table: Figure | None
) -> Figure:
    """A calibration's measured images/s, in place of the table's figure; the basis says how much
    was measured, so a figure from a few images is seen as such."""
    was = f"; the table's figure was {table.images_per_s:,.2f}" if table is not None else "; the table had none"
    return Figure(
        images_per_s,
        f"calibrated: one worker on this cluster ({device_kind}), {images:,} images in {seconds:.1f} s{was}",
        measured=True,
    )
