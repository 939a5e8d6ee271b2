"""``--dry-run`` and ``--calibrate``: plan a job and estimate its time and cost without running it.

The dry run makes the recipe's own checks (jobs/run/render.py steps 1-5: check_job, resolve_job,
plan_job) with nothing written: the output is checked without a write probe, the output folder is
inspected (resume.inspect: the same fingerprint checks as a run, which committed shards it keeps)
but never claimed, and the cluster's resources are read as the pool would need them (a request no
node can hold fails as in a run) without starting a render actor. One exception, for planning before
the cluster exists: ``--device cuda --workers N --gpu-kind KIND`` that the cluster there is cannot
place is estimated for the cluster it describes (N workers of KIND), and the report says what the
cluster there has and the error a run there stops with. It prints the plan (rows, images,
shards, workers) and the estimate (jobs/estimate/estimate.py: the throughput table, every unmeasured setting
named). Exit 0, or 2 for a bad job, as a run.

``--calibrate`` also starts exactly one render actor (the job's resources), which renders into a
temporary folder on its node (never OUTPUT; removed afterwards) one warm-up batch, then the job's
first images, cut no larger than its shards and repeated when the job has fewer, until it has
measured at least CALIBRATE_BATCHES batches and CALIBRATE_SECONDS seconds; the estimate uses that
images/s and the report says how many images and seconds it rests on. Exit 1 when the calibration
cannot render.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from turbobatch.errors import EXIT_FAILED_SHARDS, EXIT_OK, JobError, error_text
from turbobatch.jobs.estimate.estimate import (
    Figure,
    calibrated_figure,
    estimate,
    figure_for,
    format_estimate,
    job_settings,
)
from turbobatch.jobs.prepare import resume
from turbobatch.jobs.prepare.inputs import InputFile
from turbobatch.jobs.prepare.plan import make_plan
from turbobatch.jobs.run import nodes
from turbobatch.jobs.run.cluster import ClusterInfo, actor_resources, capacity_note, ray_session
from turbobatch.jobs.run.render import CheckedJob, check_job, plan_job, resolve_job
from turbobatch.models.resolve import describe_weights
from turbobatch.output.shard import Shard
from turbobatch.spec.job import JobSpec, RunOptions

ACCELERATOR = "accelerator_type:"  # Ray's node resource naming the GPU kind, e.g. accelerator_type:H200


def dry_run(spec: JobSpec, options: RunOptions) -> int:
    job = check_job(spec, write_probe=False)  # 1-3, writing nothing
    with ray_session() as cluster:
        job, unplaced = resolve_for_plan(job, cluster, options)  # 4
        plan, prints = plan_job(job)  # 5, without claiming the output
        claim = resume.inspect(job.out, job.spec, plan, prints)
        pending = [s for s in plan if s.shard_id not in claim.done]
        kind, kind_notes = device_kind(job.spec, cluster, options.gpu_kind)
        lines = report_plan(job, cluster, plan, pending, claim, options.calibrate, unplaced, options.gpu_kind)
        calibrated = None
        if options.calibrate:
            print("\n".join(lines), flush=True)
            lines = []
            measured = calibrate(job)
            if measured is None:
                return EXIT_FAILED_SHARDS
            kind = measured.device_kind or kind
            kind_notes = []
            calibrated = _calibrated(job, kind, measured)
            lines.append(
                f"measured: {measured.images_per_s:,.2f} images/s on one worker ({kind}): "
                f"{measured.describe(job.spec.batch_size)}"
            )
    e = estimate(
        job.spec,
        job.model.pipeline_class,
        job.vae.vae_class if job.vae else None,
        sum(s.num_images for s in pending),
        len(pending),
        kind,
        options.gpu_hour_price,
        calibrated,
        kind_notes,
    )
    print("\n".join([*lines, *format_estimate(e)]))
    return EXIT_OK


def resolve_for_plan(job: CheckedJob, cluster: ClusterInfo, options: RunOptions) -> tuple[CheckedJob, JobError | None]:
    """Step 4 against the cluster there is; a dry run of ``--device cuda --workers N --gpu-kind KIND``
    that it cannot place is resolved against the cluster described instead, since users plan the
    cost before they start the cluster. Returns the job and, when described, why the cluster there
    is could not place it (a run there still stops with that error; so does --calibrate, which renders)."""
    try:
        return resolve_job(job, cluster), None
    except JobError as e:
        described = None if options.calibrate else described_cluster(job.spec, options.gpu_kind)
        if described is None:
            if job.spec.device == "cuda" and not options.calibrate:
                raise JobError(
                    f"{e}; to plan for a cluster not started yet, give --device cuda --workers N --gpu-kind KIND"
                ) from e
            raise
        return resolve_job(job, described), e


def described_cluster(spec: JobSpec, gpu_kind: str | None) -> ClusterInfo | None:
    """The cluster a plan names (``--device cuda --workers N --gpu-kind KIND``): N nodes that hold one
    render actor each (its --worker-gpus, default 1, and --worker-cpus, default 1), of GPU kind KIND;
    None when the job does not name all three."""
    if spec.device != "cuda" or not spec.workers or not gpu_kind:
        return None
    gpus = spec.worker_gpus if spec.worker_gpus is not None else 1
    cpus = spec.worker_cpus if spec.worker_cpus is not None else 1
    node = {"CPU": float(cpus), "GPU": float(gpus), ACCELERATOR + gpu_kind.strip(): 1.0}
    return ClusterInfo(
        gpus=math.ceil(spec.workers * gpus - 1e-9),
        cpus=math.ceil(spec.workers * cpus - 1e-9),
        nodes=tuple(dict(node) for _ in range(spec.workers)),
    )


def unplaced_line(spec: JobSpec, cluster: ClusterInfo, gpu_kind: str | None, why: JobError) -> str:
    """What the plan was made for, and what the cluster there is has instead."""
    where = "a local Ray, which cannot grow," if cluster.local else "the Ray cluster joined"
    return (
        f"cluster:  estimated for the cluster described: {spec.workers} worker(s) of {(gpu_kind or '').strip()} "
        f"(--workers, --gpu-kind); the cluster there is now could not place them: {where} with "
        f"{cluster.gpus} GPU(s) and {cluster.cpus} CPU(s) in {len(cluster.nodes)} node(s). A run there stops: "
        f"{why}"
    )


def report_plan(
    job: CheckedJob,
    cluster: ClusterInfo,
    plan: list[Shard],
    pending: list[Shard],
    claim: resume.Claim,
    calibrating: bool = False,
    unplaced: JobError | None = None,
    gpu_kind: str | None = None,
) -> list[str]:
    spec = job.spec
    images = sum(s.num_images for s in plan)
    per_row = f" ({job.per_row} per row)" if job.per_row > 1 else " (1 per row)"
    kept = (
        "the existing output of another job is discarded (--overwrite)"
        if claim.discard
        else f"{len(claim.done)} shards committed before"
    )
    bundle = actor_resources(spec)
    room = nodes.room(cluster.nodes, bundle)
    actor = (
        "one render actor renders the job's first images into a temporary folder (--calibrate)"
        if calibrating
        else "no render actor starts"
    )
    lines = [
        f"turbobatch: dry run: nothing is written to the output and {actor}",
        f"input:    {job.total_rows:,} rows in {len(job.files)} file(s)",
        f"plan:     {images:,} images{per_row} in {len(plan)} shards of up to {spec.shard_size} images; {kept}, "
        f"{len(pending)} shards ({sum(s.num_images for s in pending):,} images) to render",
        f"output:   {job.out.display()}: {job.output_state}",
        f"workers:  up to {spec.workers} {spec.device} render actor(s) of {nodes.describe(bundle)} (rendering starts "
        f"with {spec.min_workers}); the cluster has room for {min(room, spec.workers)} now",
        f"model:    {spec.model} ({job.model.pipeline_class}"
        + (f", VAE {spec.vae} ({job.vae.vae_class})" if job.vae else "")
        + (f", ControlNet {spec.controlnet}" if spec.controlnet else "")
        + f"), {spec.width}x{spec.height}, {spec.steps} step(s), guidance {spec.guidance_scale:g}, {spec.dtype}, "
        f"batch {spec.batch_size}",
    ]
    if weights := describe_weights(spec):
        lines.append(weights.replace("turbobatch: weights: ", "weights:  "))
    if unplaced is not None:
        lines.append(unplaced_line(spec, cluster, gpu_kind, unplaced))
    elif note := capacity_note(spec, cluster):
        lines.append(note.replace("turbobatch: ", "workers:  "))
    return lines


def device_kind(spec: JobSpec, cluster: ClusterInfo, asked: str | None) -> tuple[str, list[str]]:
    """The device kind to estimate for, and notes on where it came from: cpu; --gpu-kind; the GPU
    kind of the cluster's nodes (Ray's accelerator_type resource), or of the node types its
    autoscaler may add; else "unknown" (the estimate then says which GPU's figure it used)."""
    if spec.device == "cpu":
        return "cpu", []
    if asked:
        return asked.strip(), []
    for where, found in (("nodes", cluster.nodes), ("autoscaler's node types", cluster.node_types or ())):
        kinds = sorted({k[len(ACCELERATOR) :] for node in found for k in node if k.startswith(ACCELERATOR)})
        if len(kinds) == 1:
            return kinds[0], []
        if kinds:
            return kinds[0], [
                f"the cluster's {where} have several GPU kinds ({', '.join(kinds)}): estimated for "
                f"{kinds[0]}; --gpu-kind chooses"
            ]
    return "unknown GPU", ["the cluster has no GPU node now to tell its GPU kind: --gpu-kind names it"]


# -- --calibrate ---------------------------------------------------------------------------------
# What a calibration measures, after one warm-up batch it does not count (cuDNN's choices, first
# allocations, compiling): at least this many batches' worth of images AND at least this many seconds
# of rendering. A few images timed once said 7x the speed real runs reach.
CALIBRATE_BATCHES = 3
CALIBRATE_SECONDS = 5.0
CALIBRATE_ROUNDS = 6  # calls to the actor at most; each asks for what the last one left short


class CalibrationWorker:
    """A RenderWorker for the job whose output is a temporary folder on its own node."""

    def __init__(self, spec: JobSpec) -> None:
        from turbobatch.workers.actor import RenderWorker

        self.folder = tempfile.mkdtemp(prefix="turbobatch-calibrate-")
        spec = dataclasses.replace(
            spec,
            output=self.folder,
            input_storage_options=spec.input_options(),
            storage_options={},
            output_storage_options={},
        )
        self.worker = RenderWorker(spec)

    def ready(self) -> dict[str, Any]:
        return self.worker.ready()

    def render(self, pieces: list[Shard]) -> list[dict[str, Any]]:
        """Render and commit ``pieces`` one after another into the temporary folder, remove the
        folder (the next call makes it again), return their markers."""
        try:
            return [self.worker.render_shard(piece) for piece in pieces]
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class Measurement:
    """What the calibration has measured so far: images rendered ok after the warm-up batch, and the
    device seconds they took (each piece's own "render" time, so reading and committing between pieces
    are not counted, as status counts images per device-second)."""

    images: int = 0
    seconds: float = 0.0
    pieces: int = 0
    device_kind: str | None = None

    def add(self, markers: list[dict[str, Any]]) -> None:
        for marker in markers:
            self.images += marker.get("ok", 0)
            self.seconds += marker.get("timings_s", {}).get("render", 0.0)
            self.pieces += 1
            self.device_kind = marker.get("device_kind") or self.device_kind

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def enough(self, batch_size: int) -> bool:
        return self.images >= CALIBRATE_BATCHES * batch_size and self.seconds >= CALIBRATE_SECONDS

    def still_wanted(self, batch_size: int) -> int:
        """Images for the next round: the batches still missing, or the seconds still missing at the
        speed measured so far (with 20% to spare), in whole batches."""
        batches = max(0, CALIBRATE_BATCHES * batch_size - self.images)
        seconds = max(0.0, CALIBRATE_SECONDS - self.seconds)
        timed = math.ceil(self.images_per_s * seconds * 1.2) if self.images_per_s else CALIBRATE_BATCHES * batch_size
        return max(batch_size, math.ceil(max(batches, timed) / batch_size) * batch_size)

    def describe(self, batch_size: int) -> str:
        return (
            f"{self.images:,} images in {self.seconds:.1f} s of rendering after a warm-up batch of {batch_size} "
            f"({self.pieces} piece(s) of the job's first images, no larger than its shards)"
        )


def calibration_pieces(files: list[InputFile], spec: JobSpec, per_row: int, images: int) -> list[Shard]:
    """The job's first images cut as its shards are (``--shard-size``, never across files), cut
    shorter when fewer images are wanted, repeated from the start when the job has fewer: at
    least ``images`` images. Which images does not matter for the speed; shard sizes do (a
    shard's last batch may be short), so a piece is never larger than the job's shards."""
    plan = make_plan(files, max(1, min(spec.shard_size, images)), per_row)
    pieces: list[Shard] = []
    while sum(p.num_images for p in pieces) < images:
        pieces.append(plan[len(pieces) % len(plan)])
    return pieces


def calibrate(job: CheckedJob) -> Measurement | None:
    """One actor renders a warm-up batch, then the job's first images until it has measured
    CALIBRATE_BATCHES batches and CALIBRATE_SECONDS seconds; None when it cannot (said why)."""
    import ray

    from turbobatch.jobs.run.cluster import actor_env

    spec = job.spec
    cls = ray.remote(CalibrationWorker).options(
        num_cpus=spec.worker_cpus, num_gpus=spec.worker_gpus or 0, runtime_env={"env_vars": actor_env()}
    )
    actor = cls.remote(spec)
    print(
        f"calibrate: one render actor of {nodes.describe(actor_resources(spec))} renders a warm-up batch, then "
        f"at least {CALIBRATE_BATCHES} batches and {CALIBRATE_SECONDS:g} s of the job's first images, into a "
        "temporary folder on its node",
        file=sys.stderr,
        flush=True,
    )
    try:
        if _wait(actor.ready.remote(), "start", spec) is None:
            return None
        warm_up = calibration_pieces(job.files, spec, job.per_row, spec.batch_size)[:1]
        if _wait(actor.render.remote(warm_up), "render a warm-up batch", spec) is None:
            return None
        return _measure(actor, job)
    except ray.exceptions.RayError as e:
        print(f"error: calibrate: {error_text(e)}", file=sys.stderr)
        return None
    finally:
        ray.kill(actor)


def _measure(actor: Any, job: CheckedJob) -> Measurement | None:
    """Rounds of pieces until the measurement is enough; None (said why) when a round renders no image."""
    spec, measured = job.spec, Measurement()
    wanted = CALIBRATE_BATCHES * spec.batch_size
    for _ in range(CALIBRATE_ROUNDS):
        pieces = calibration_pieces(job.files, spec, job.per_row, wanted)
        markers = _wait(actor.render.remote(pieces), "render", spec)
        if markers is None:
            return None
        if not any(m.get("ok") for m in markers):
            errors = sum(m.get("error", 0) for m in markers)
            print(
                f"error: calibrate: the job's first {wanted} images rendered no image ({errors} error rows)",
                file=sys.stderr,
            )
            return None
        measured.add(markers)
        if measured.enough(spec.batch_size):
            break
        wanted = measured.still_wanted(spec.batch_size)
    return measured


def _wait(ref: Any, step: str, spec: JobSpec) -> Any:
    """The call's result, or None (said why) when it does not come within --stall-timeout."""
    import ray

    ready, _ = ray.wait([ref], timeout=spec.stall_timeout)
    if ready:
        return ray.get(ready[0])
    why = nodes.pending_reason(actor_resources(spec), nodes.alive_nodes().values())
    print(
        f"error: calibrate: the render actor did not {step} within --stall-timeout {spec.stall_timeout:g} s "
        f"(if it waits for room: {why})",
        file=sys.stderr,
    )
    return None


def _calibrated(job: CheckedJob, kind: str, measured: Measurement) -> Figure:
    settings = job_settings(job.spec, job.model.pipeline_class, job.vae.vae_class if job.vae else None, kind)
    setting = max(settings, key=lambda pair: pair[0])[1]
    return calibrated_figure(
        setting, measured.images_per_s, measured.images, measured.seconds, kind, figure_for(setting)
    )
