"""The render job, as a recipe (``turbobatch render INPUT OUTPUT [options]``; jobs/cli.py parses it).

Every check that can fail a job runs before any actor starts; then shards without a done
marker are rendered and committed by the actors. Rerun the same command to resume. Steps 1-5's
checks and plan are functions (check_job, resolve_job, plan_job) that the dry run (jobs/estimate/dryrun.py,
``--dry-run``) runs too, without writing anything.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any

from turbobatch.errors import EXIT_FAILED_SHARDS, EXIT_OK, JobError, JobStalled
from turbobatch.jobs.card import write_card
from turbobatch.jobs.prepare import resume
from turbobatch.jobs.prepare.inputs import InputFile, check_columns, check_output_apart, scan_inputs
from turbobatch.jobs.prepare.plan import fingerprint, make_plan
from turbobatch.jobs.prepare.unique_keys import check_unique_keys
from turbobatch.jobs.run import schedule
from turbobatch.jobs.run.block_summaries import BlockSummaries
from turbobatch.jobs.run.cluster import ClusterInfo, capacity_note, ray_session, resolve_spec
from turbobatch.jobs.run.progress import Progress
from turbobatch.models.img2img import check_img2img
from turbobatch.models.lora import LoraInfo, resolve_loras, with_lora_sources
from turbobatch.models.resolve import (
    ControlNetInfo,
    ModelInfo,
    VaeInfo,
    describe_weights,
    resolve_controlnet,
    resolve_model,
    resolve_vae,
    resolve_weights,
)
from turbobatch.output.columns import with_kept_columns
from turbobatch.output.shard import Shard
from turbobatch.output.storage import Folder
from turbobatch.spec.expand import images_per_row
from turbobatch.spec.job import JobSpec
from turbobatch.spec.resolved import ResolvedJob
from turbobatch.spec.sampling import MAX_SEED


@dataclass(frozen=True)
class CheckedJob:
    """A job that passed the checks of steps 1-3 (and, once resolved, step 4)."""

    spec: JobSpec  # the user's after steps 1-3; a ResolvedJob after step 4
    out: Folder
    files: list[InputFile]
    total_rows: int
    per_row: int  # images per prompt x sweep combinations
    model: ModelInfo
    vae: VaeInfo | None
    controlnet: ControlNetInfo | None
    kept_schema: str | None = None  # the kept columns' types (step 2), for the resolved job
    output_state: str = ""  # what step 1 found (the dry run's report)
    loras: tuple[LoraInfo, ...] = ()  # --lora, checked against the model


def check_job(spec: JobSpec, write_probe: bool = True) -> CheckedJob:
    """Steps 1-3, shared by a run and its dry run (``write_probe=False``: nothing is written)."""
    # 1. The output must lie apart from the input (paths only), and be writable (the probe leaves no trace).
    out = Folder(spec.output, spec.output_options())
    check_output_apart(spec.input, spec.input_options(), out)
    if write_probe:
        resume.check_writable(out)
        state = "writable"
    else:
        state = resume.check_writable_read_only(out)
    spec = dataclasses.replace(spec, output=out.absolute_url)  # actors may run in another cwd
    # 2. Inputs: list the files, read their footers, check the columns (and keys if named, and the
    #    template's fields); the kept columns and their types become the job's one schema.
    files = scan_inputs(spec.input, spec.input_options())
    check_columns(files, spec)
    spec, kept = with_kept_columns(files, spec)
    if spec.key_column:
        check_unique_keys(files, spec.key_column, spec.input_options())
    total_rows = sum(f.num_rows for f in files)
    if spec.seed + total_rows * spec.images_per_prompt > MAX_SEED:
        raise JobError(
            f"--seed: {spec.seed} + {total_rows} rows x {spec.images_per_prompt} images per prompt would "
            "pass 2**63; use a smaller job seed"
        )
    # 3. Model, VAE and ControlNet: list their folders and read their configs only (loadable?
    #    supported? a pair?); a URL is read with the input side's storage options.
    model = resolve_model(spec.model, spec.weights, spec.input_options())
    vae = resolve_vae(spec.vae, model, spec.input_options()) if spec.vae else None
    controlnet = resolve_controlnet(spec.controlnet, model, spec.input_options()) if spec.controlnet else None
    check_img2img(spec, model)
    loras = tuple(resolve_loras(spec, model))  # each LoRA's header against the model's (models/lora.py)
    return CheckedJob(spec, out, files, total_rows, images_per_row(spec), model, vae, controlnet, kept, state, loras)


def resolve_job(job: CheckedJob, cluster: ClusterInfo) -> CheckedJob:
    """Step 4: fill in what depends on the cluster (device, dtype, size, worker count; a request the
    cluster can never hold fails here); then each model's variant (auto: by dtype) and the files
    every node fetches once. From here on the job is a ResolvedJob, the type the actors receive."""
    spec = resolve_spec(ResolvedJob.of(job.spec, kept_schema=job.kept_schema), job.model, cluster)
    spec = resolve_weights(spec, job.model, job.vae, job.controlnet)
    return dataclasses.replace(job, spec=with_lora_sources(spec, list(job.loras)))


def plan_job(job: CheckedJob) -> tuple[list[Shard], dict[str, Any]]:
    """Step 5's plan: the shards (ranges of the job's images) and the fingerprint the output is claimed with."""
    return make_plan(job.files, job.spec.shard_size, job.per_row), fingerprint(job.files, job.spec)


def run(spec: JobSpec) -> int:
    job = check_job(spec)  # 1-3. output writable, inputs and columns, model configs
    out, total_rows, per_row, files = job.out, job.total_rows, job.per_row, job.files
    with ray_session() as cluster:
        # 4. What depends on the cluster; the weights each node fetches.
        job = resolve_job(job, cluster)
        spec = job.spec  # a ResolvedJob from here on: what the actors receive
        # 5. Plan the shards and claim (or resume) the output; clear what dead runs left.
        plan, prints = plan_job(job)
        done = resume.prepare(out, spec, plan, prints)
        failed_before = resume.tidy(out, done)
        pending = [s for s in plan if s.shard_id not in done]
        retried = f" ({len(failed_before)} failed before, retried now)" if failed_before else ""
        images = f" x {per_row} images per row = {total_rows * per_row} images" if per_row > 1 else ""
        print(
            f"turbobatch: {total_rows} rows in {len(files)} file(s){images} -> {len(plan)} shards; "
            f"{len(done)} already committed, {len(pending)} to render{retried} on up to {spec.workers} "
            f"{spec.device} worker(s) (rendering starts with {spec.min_workers})",
            file=sys.stderr,
        )
        if pending and (weights := describe_weights(spec)):
            print(weights, file=sys.stderr)
        if pending and (note := capacity_note(spec, cluster)):
            print(note, file=sys.stderr)
        # 6. Render: actors join as they start; failures are retried or recorded under _failed/.
        progress = Progress(len(plan), len(done), sum(s.num_images for s in pending))
        stalled = None
        try:
            summaries = BlockSummaries(out, len(plan), done)  # for the next resume, status and the card
            schedule.render_shards(pending, spec, out, progress, failed_before, summaries)
        except JobStalled as e:
            stalled = e
        finally:
            progress.close()
        resume.remove_temp_leftovers(out)
    # 7. The dataset card for what is committed now; summary; the exit code tells whether too
    #    many shards failed, or the job stalled.
    write_card(out, spec, job.model.location)
    print(progress.summary(out.display()))
    if stalled is not None:
        print(f"error: {stalled}\ncommitted shards are kept; run the same command again to resume", file=sys.stderr)
        return EXIT_FAILED_SHARDS
    return EXIT_FAILED_SHARDS if len(progress.failed) > spec.max_failed_shards else EXIT_OK
