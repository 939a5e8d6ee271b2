"""RenderWorker: one long-lived pipeline that renders and commits whole shards.

A plain class: the driver wraps it in a Ray actor (jobs/run/pool.py); tests and the GPU
machine use it without Ray, which it never imports: its metrics (turbobatch/metrics.py) are recorded
only when it runs under Ray. The actor runs two shards at once (Ray's ``max_concurrency``), but
every pipeline call runs on one "device" thread, one shard at a time (the pipeline is not
thread-safe): while one shard renders, the other reads its rows or finishes encodes and uploads
its tar, so reading and committing overlap rendering instead of leaving the device idle. One
OS thread for all torch work also matters on CPU: torch calls alternating between threads ran
about 40% slower here (each thread gets its own OpenMP team).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from turbobatch import faults
from turbobatch.errors import InfrastructureError, is_retryable
from turbobatch.metrics import WorkerMetrics
from turbobatch.models import cache as model_cache
from turbobatch.models.lora import load_loras
from turbobatch.models.resolve import load_pipeline
from turbobatch.output.shard import Shard
from turbobatch.output.storage import Folder
from turbobatch.spec.resolved import ResolvedJob
from turbobatch.workers.batches import PipelineRenderer
from turbobatch.workers.control import ControlImageLoader
from turbobatch.workers.images import image_rows
from turbobatch.workers.init_images import InitImageLoader
from turbobatch.workers.row_images import RowImageError
from turbobatch.workers.rows import Row, ShardReader, rows_from_table
from turbobatch.workers.speedups import registry as speedups
from turbobatch.workers.staging import Stager, staging_reason
from turbobatch.workers.writer import ShardWriter

ENCODE_THREADS = max(2, min(8, (os.cpu_count() or 2)))


class RenderWorker:
    def __init__(self, spec: ResolvedJob, pipe: Any = None) -> None:
        """``pipe``: an already loaded pipeline for ``spec`` (benchmarks share weights between
        workers); by default the worker loads its own."""
        if not isinstance(spec, ResolvedJob) or None in (spec.device, spec.dtype, spec.height, spec.width):
            raise ValueError(
                "RenderWorker needs the job resolved by the driver (a ResolvedJob with device, dtype and size set)"
            )
        faults.on_worker_start()
        self.spec = spec
        self.out = Folder(spec.output, spec.output_options())
        # Start-up, timed for the first done marker: the weights reach this node (copied once per
        # node, or found in its cache), then load; "first_batch" is added by the first render.
        started = time.perf_counter()
        fetched = model_cache.fetch_all(spec) if pipe is None else []
        loading = time.perf_counter()
        loras = None  # --lora: fused into the weights, or switched per batch (--lora-column)
        if pipe is None:
            locations = {f.component: f.path for f in fetched}  # this node's copies
            pipe = load_pipeline(spec, locations)
            loras = load_loras(pipe, spec, locations)
        speedups.apply(pipe, spec.speedup_set)
        if spec.compile != "off":
            speedups.compile_unet(pipe, mode=spec.compile)  # compiles lazily, on the first call
        # A card too small for the whole pipeline: encode each shard's prompts first (workers/staging.py).
        staging = staging_reason(pipe, spec.device)
        if staging:
            print(f"turbobatch: worker: staging: {staging}", file=sys.stderr, flush=True)
        self.startup: dict[str, Any] | None = {
            "startup_s": {
                "fetch": round(loading - started, 3),
                "load": round(time.perf_counter() - loading, 3),
                "first_batch": None,
            },
            "model_fetch": [f.to_marker() for f in fetched],
            **({"staging": staging} if staging else {}),
        }
        self._startup_lock = threading.Lock()
        # A compiled model compiles again for a new batch shape: pad short batches to the full size.
        compiled = spec.compile != "off" or "compile_decoder" in spec.speedup_set
        self.renderer = PipelineRenderer(
            pipe,
            spec,
            spec.device,
            overlap="overlap" in spec.speedup_set,
            pad_batches=compiled,
            loras=loras,
            stager=Stager(pipe, spec.device) if staging else None,
        )
        self.reader = ShardReader(spec, spec.input_options())
        self.controls = ControlImageLoader(spec, spec.input_options()) if spec.controlnet else None
        self.inits = InitImageLoader(spec, spec.input_options()) if spec.init_image_column else None
        self.pool = ThreadPoolExecutor(ENCODE_THREADS, thread_name_prefix="encode")
        self._device = ThreadPoolExecutor(1, thread_name_prefix="device")  # every pipeline call, in turn
        self._reading = threading.Lock()  # ShardReader keeps a row-group cache
        self._device_free_since: float | None = None  # when the last shard's rendering ended
        # Who renders, for done markers and the driver (draining nodes): host, Ray node, process, and
        # the device's kind as torch names it ("NVIDIA H200", or "cpu"): what measured runs are keyed by.
        self.origin = {
            "worker": socket.gethostname(),
            "node_id": ray_node_id(),
            "pid": os.getpid(),
            "device_kind": device_kind(spec.device),
        }
        # Ray's metrics (turbobatch/metrics.py) when running under Ray; None without it (benchmarks, tests).
        self.metrics = WorkerMetrics.start(spec.model, self.origin)

    def ready(self) -> dict[str, Any]:
        """Returns once the pipeline is loaded (the actor then takes shards): where it runs. (How
        long the start took goes into the worker's first done marker, with its first batch.)"""
        return {
            "host": self.origin["worker"],
            "node_id": self.origin["node_id"],
            "pid": self.origin["pid"],
            "device": self.spec.device,
            "device_kind": self.origin["device_kind"],
        }

    def _take_startup(self) -> dict[str, Any]:
        """The start-up record, for the first shard this worker commits only."""
        with self._startup_lock:
            record, self.startup = self.startup, None
        return record or {}

    def _load_control(self, row: Row) -> None:
        try:
            row.control_image = self.controls.decode(row.control)
        except RowImageError as e:
            row.error = str(e)

    def _control_at_size(self, images: list[Row]) -> None:
        """Each image's control input at its own size (canny per size), made once per row and size,
        on the pool's threads as the decodes are."""

        def key(image: Row) -> tuple[int, int, int]:
            return image.global_index, image.params.height, image.params.width

        firsts: dict[tuple[int, int, int], Row] = {}
        for image in images:
            firsts.setdefault(key(image), image)  # one image per row and size
        made = dict(
            zip(
                firsts,
                self.pool.map(
                    lambda i: self.controls.at_size(i.control_image, i.params.height, i.params.width), firsts.values()
                ),
            )
        )
        for image in images:
            image.control_image = made[key(image)]

    def render_shard(self, shard: Shard) -> dict[str, Any]:
        """Render and commit one shard; returns its done marker.

        A failure the driver may retry (storage timeouts, 5xx) is raised as InfrastructureError;
        anything else as it is, and the driver records the shard as failed.
        """
        try:
            return self._render_shard(shard)
        except Exception as e:
            if is_retryable(e) and not isinstance(e, InfrastructureError):
                raise InfrastructureError(f"{type(e).__name__}: {e}") from e
            raise

    def _render_shard(self, shard: Shard) -> dict[str, Any]:
        started = time.perf_counter()
        # 1. Read the input rows this shard's images come from; invalid ones become error records.
        with self._reading:
            table = self.reader.read(shard)
        rows = rows_from_table(table, shard, self.spec)
        if self.controls is not None:
            list(self.pool.map(self._load_control, [r for r in rows if r.error is None]))
        if self.inits is not None:
            self.inits.load_rows(rows, self.pool)
        # 2. Each row's images (images per prompt x sweep combinations) in the shard's range; a bad
        #    row gives one error record per image it would have made.
        images = image_rows(rows, shard, self.spec)
        valid = [r for r in images if r.error is None]
        if self.controls is not None:
            self._control_at_size(valid)
        if self.inits is not None:
            self.inits.at_sizes(valid, self.pool)
        timings = {"read": time.perf_counter() - started}
        with ShardWriter(
            self.out, shard, self.spec, self.pool, max_pending=4 * ENCODE_THREADS, origin=self.origin
        ) as writer:
            for image in images:
                if image.error is not None:
                    writer.add_error(image)
            # 3. Render valid images on the device thread, batched by shape and step count; encodes
            #    overlap the next pipeline call. An image the pipeline raised on comes back with its error.
            rendering = self._device.submit(self._render_rows, valid, writer, timings, time.perf_counter())
            _check_not_all_failed(valid, rendering.result())
            # 4. Off the device (the next shard renders meanwhile): flush images, write metadata,
            #    then the done marker.
            marker = writer.commit(timings, started, extra=self._take_startup())
        self._record_metrics(marker)
        return marker

    def _record_metrics(self, marker: dict[str, Any]) -> None:
        """The committed shard's counts and times to Ray's metrics; never fails the shard."""
        if self.metrics is None:
            return
        try:
            self.metrics.shard_committed(marker)
        except Exception as e:  # noqa: BLE001 - the shard is committed; metrics are a view of it
            print(f"turbobatch: warning: could not record metrics ({type(e).__name__}: {e})", file=sys.stderr)

    def _render_rows(self, valid: list[Row], writer: ShardWriter, timings: dict[str, float], asked: float) -> list[Row]:
        """Runs on the device thread: renders ``valid`` into ``writer``; returns the rows the
        pipeline raised on. Records in ``timings`` how long the shard waited for the device
        ("device_wait": another shard was rendering), how long the device sat idle before it
        ("device_idle_before": since the previous shard's rendering ended, 0 for the first),
        how long it rendered ("render"), within that in pipeline calls ("pipeline") and blocked
        on the encode queue ("writer_wait")."""
        got = time.perf_counter()
        free_since = self._device_free_since
        timings.update(device_wait=got - asked, device_idle_before=got - free_since if free_since else 0.0)
        failed: list[Row] = []
        pipeline_s = 0.0
        try:
            for result in self.renderer.render(valid):
                self._note_first_batch(got)
                if isinstance(result, Row):
                    failed.append(result)
                    writer.add_error(result)
                else:
                    pipeline_s += result.render_ms / 1000  # per row: its call's time / rows in the call
                    writer.add_image(result)
        finally:
            self._device_free_since = time.perf_counter()
            timings.update(render=self._device_free_since - got, pipeline=pipeline_s, writer_wait=writer.wait_s)
        return failed

    def _note_first_batch(self, render_started: float) -> None:
        """The worker's first rendered batch: how long its first result took (warm-up, kernel
        selection, compiling) goes into the start-up record."""
        startup = self.startup
        if startup is not None and startup["startup_s"]["first_batch"] is None:
            startup["startup_s"]["first_batch"] = round(time.perf_counter() - render_started, 3)


def device_kind(device: str) -> str:
    """The device as torch names it: ``torch.cuda.get_device_name`` on CUDA ("NVIDIA H200"), else "cpu"."""
    if not device.startswith("cuda"):
        return "cpu"
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def ray_node_id() -> str | None:
    """This process's Ray node id (hex) when it runs under Ray, else None: the class is also used
    without Ray, and never imports it."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()


class PipelineFailedEveryRow(RuntimeError):
    """Every row of a shard made the pipeline raise: a broken worker, not bad rows."""


def _check_not_all_failed(valid: list[Row], failed: list[Row]) -> None:
    """Fail the shard (uncommitted, so a rerun retries it) rather than commit only errors.

    One bad row fails alone; but when every one of several rows fails, the cause is the
    pipeline or the machine, and committing would turn that into permanent row errors.
    """
    if len(valid) >= 2 and len(failed) == len(valid):
        raise PipelineFailedEveryRow(f"the pipeline raised on all {len(valid)} rows; first: {failed[0].error}")
