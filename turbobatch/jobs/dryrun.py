"""``--dry-run`` and ``--calibrate``: plan a job and estimate its time and cost without running it.

The dry run makes the recipe's own checks (jobs/render.py steps 1-5: check_job, resolve_job,
plan_job) with nothing written: the output is checked without a write probe, the output folder is
inspected (resume.inspect: the same fingerprint checks as a run, which committed shards it keeps)
but never claimed, and the cluster's resources are read as the pool would need them (a request no
node can hold fails as in a run) without starting a render actor. It prints the plan (rows, images,
shards, workers) and the estimate (jobs/estimate.py: the throughput table, every unmeasured setting
named). Exit 0, or 2 for a bad job, as a run.

``--calibrate`` also starts exactly one render actor (the job's resources), renders the job's first
shard into a temporary folder on that actor's node (never OUTPUT; removed afterwards), and uses the
measured images/s in the estimate. Exit 1 when the calibration cannot render.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
from typing import Any

from turbobatch.jobs import nodes, resume
from turbobatch.jobs.cli import RunOptions
from turbobatch.jobs.cluster import ClusterInfo, actor_resources, capacity_note, ray_session
from turbobatch.jobs.errors import error_text
from turbobatch.jobs.estimate import Figure, calibrated_figure, estimate, figure_for, format_estimate, job_settings
from turbobatch.jobs.plan import Shard
from turbobatch.jobs.render import EXIT_FAILED_SHARDS, EXIT_OK, CheckedJob, check_job, plan_job, resolve_job
from turbobatch.jobs.spec import JobSpec
from turbobatch.workers.models import describe_weights

ACCELERATOR = "accelerator_type:"  # Ray's node resource naming the GPU kind, e.g. accelerator_type:H200


def dry_run(spec: JobSpec, options: RunOptions) -> int:
    job = check_job(spec, write_probe=False)  # 1-3, writing nothing
    with ray_session() as cluster:
        job = resolve_job(job, cluster)  # 4
        plan, prints = plan_job(job)  # 5, without claiming the output
        claim = resume.inspect(job.out, job.spec, plan, prints)
        pending = [s for s in plan if s.shard_id not in claim.done]
        kind, kind_notes = device_kind(job.spec, cluster, options.gpu_kind)
        lines = report_plan(job, cluster, plan, pending, claim, options.calibrate)
        calibrated = None
        if options.calibrate:
            print("\n".join(lines), flush=True)
            lines = []
            measured = calibrate(job.spec, plan[0])
            if measured is None:
                return EXIT_FAILED_SHARDS
            kind = measured["device_kind"] or kind
            kind_notes = []
            calibrated = _calibrated(job, kind, measured)
            lines.append(f"measured: {measured['images_per_s']:,.2f} images/s on one worker ({kind}), shard 0: "
                         f"{measured['how']}; {measured['total_s']:.1f} s for the whole shard")  # fmt: skip
    e = estimate(job.spec, job.model.pipeline_class, job.vae.vae_class if job.vae else None,
                 sum(s.num_images for s in pending), len(pending), kind, options.gpu_hour_price, calibrated,
                 kind_notes)  # fmt: skip
    print("\n".join([*lines, *format_estimate(e)]))
    return EXIT_OK


def report_plan(job: CheckedJob, cluster: ClusterInfo, plan: list[Shard], pending: list[Shard],
                claim: resume.Claim, calibrating: bool = False) -> list[str]:  # fmt: skip
    spec = job.spec
    images = sum(s.num_images for s in plan)
    per_row = f" ({job.per_row} per row)" if job.per_row > 1 else " (1 per row)"
    kept = ("the existing output of another job is discarded (--overwrite)" if claim.discard
            else f"{len(claim.done)} shards committed before")  # fmt: skip
    bundle = actor_resources(spec)
    room = nodes.room(cluster.nodes, bundle)
    lines = [
        "turbobatch: dry run: nothing is written to the output and "
        + ("one render actor renders shard 0 into a temporary folder (--calibrate)" if calibrating else "no render actor starts"),
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
    if note := capacity_note(spec, cluster):
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
        kinds = sorted({k[len(ACCELERATOR):] for node in found for k in node if k.startswith(ACCELERATOR)})
        if len(kinds) == 1:
            return kinds[0], []
        if kinds:
            return kinds[0], [f"the cluster's {where} have several GPU kinds ({', '.join(kinds)}): estimated for "
                              f"{kinds[0]}; --gpu-kind chooses"]  # fmt: skip
    return "unknown GPU", ["the cluster has no GPU node now to tell its GPU kind: --gpu-kind names it"]


# -- --calibrate ---------------------------------------------------------------------------------
class CalibrationWorker:
    """A RenderWorker for the job whose output is a temporary folder on its own node."""

    def __init__(self, spec: JobSpec) -> None:
        from turbobatch.workers.actor import RenderWorker

        self.folder = tempfile.mkdtemp(prefix="turbobatch-calibrate-")
        spec = dataclasses.replace(spec, output=self.folder, input_storage_options=spec.input_options(),
                                   storage_options={}, output_storage_options={})  # fmt: skip
        self.worker = RenderWorker(spec)

    def ready(self) -> dict[str, Any]:
        return self.worker.ready()

    def render(self, shard: Shard) -> dict[str, Any]:
        """Render and commit ``shard`` into the temporary folder, remove the folder, return the marker."""
        try:
            return self.worker.render_shard(shard)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def calibrate(spec: JobSpec, shard: Shard) -> dict[str, Any] | None:
    """One actor renders ``shard``: its images/s after the first batch (warm-up), or None (said why)."""
    import ray

    from turbobatch.jobs.cluster import actor_env

    cls = ray.remote(CalibrationWorker).options(num_cpus=spec.worker_cpus, num_gpus=spec.worker_gpus or 0,
                                                runtime_env={"env_vars": actor_env()})  # fmt: skip
    actor = cls.remote(spec)
    print(f"calibrate: one render actor of {nodes.describe(actor_resources(spec))} renders shard 0 "
          f"({shard.num_images} images) into a temporary folder on its node", file=sys.stderr, flush=True)
    try:
        if _wait(actor.ready.remote(), "start", spec) is None:
            return None
        marker = _wait(actor.render.remote(shard), "render shard 0", spec)
        if marker is None:
            return None
    except ray.exceptions.RayError as e:
        print(f"error: calibrate: {error_text(e)}", file=sys.stderr)
        return None
    finally:
        ray.kill(actor)
    return measured_speed(marker, spec.batch_size)


def _wait(ref: Any, step: str, spec: JobSpec) -> Any:
    """The call's result, or None (said why) when it does not come within --stall-timeout."""
    import ray

    ready, _ = ray.wait([ref], timeout=spec.stall_timeout)
    if ready:
        return ray.get(ready[0])
    why = nodes.pending_reason(actor_resources(spec), nodes.alive_nodes().values())
    print(f"error: calibrate: the render actor did not {step} within --stall-timeout {spec.stall_timeout:g} s "
          f"(if it waits for room: {why})", file=sys.stderr)  # fmt: skip
    return None


def measured_speed(marker: dict[str, Any], batch_size: int) -> dict[str, Any] | None:
    """A shard's images/s from its done marker: the images after its first batch over the device
    time after it (the first batch holds the warm-up: cuDNN's choices, first allocations, compiling);
    a shard of one batch: all of it."""
    t = marker.get("timings_s", {})
    render, ok = t.get("render", 0.0), marker.get("ok", 0)
    first = (marker.get("startup_s") or {}).get("first_batch")
    warm = min(batch_size, ok)
    if first is not None and ok > warm and render > first:
        speed, how = (ok - warm) / (render - first), f"{ok - warm} images after the first batch of {warm} (warm-up)"
    elif render > 0 and ok:
        speed, how = ok / render, f"{ok} images, the first batch's warm-up included"
    else:
        print(f"error: calibrate: shard 0 rendered no image ({marker.get('error', 0)} error rows)", file=sys.stderr)
        return None
    return {"images_per_s": speed, "images": ok, "how": how, "total_s": t.get("total", 0.0),
            "device_kind": marker.get("device_kind")}  # fmt: skip


def _calibrated(job: CheckedJob, kind: str, measured: dict[str, Any]) -> Figure:
    settings = job_settings(job.spec, job.model.pipeline_class, job.vae.vae_class if job.vae else None, kind)
    setting = max(settings, key=lambda pair: pair[0])[1]
    return calibrated_figure(setting, measured["images_per_s"], measured["images"], kind, figure_for(setting))

