"""RenderWorker: one long-lived pipeline that renders and commits whole shards.

A plain class: the driver wraps it in a Ray actor (jobs/schedule.py); tests and the GPU
machine use it without Ray.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jobs.plan import Shard
from jobs.retry import InfrastructureError, is_retryable
from jobs.spec import JobSpec
from jobs.storage import Folder
from workers import speedups
from workers.control import ControlImageError, ControlImageLoader
from workers.models import load_pipeline
from workers.renderer import PipelineRenderer
from workers.rows import Row, ShardReader, rows_from_table
from workers.writer import ShardWriter

ENCODE_THREADS = max(2, min(8, (os.cpu_count() or 2)))


class RenderWorker:
    def __init__(self, spec: JobSpec) -> None:
        if spec.device is None or spec.dtype is None or spec.height is None or spec.width is None:
            raise ValueError("RenderWorker needs a spec resolved by the driver (device, dtype, size)")
        self.spec = spec
        self.out = Folder(spec.output, spec.output_options())
        pipe = load_pipeline(spec)
        if spec.compile != "off":
            speedups.compile_unet(pipe, mode=spec.compile)  # compiles lazily, on the first call
        self.renderer = PipelineRenderer(pipe, spec, spec.device)
        self.reader = ShardReader(spec, spec.input_options())
        self.controls = ControlImageLoader(spec, spec.input_options()) if spec.controlnet else None
        self.pool = ThreadPoolExecutor(ENCODE_THREADS, thread_name_prefix="encode")

    def ready(self) -> str:
        """Returns once the pipeline is loaded; the driver waits on it before feeding shards."""
        return f"{os.uname().nodename} pid {os.getpid()} {self.spec.device}"

    def _load_control(self, row: Row) -> None:
        try:
            row.control_image = self.controls.load(row.control)
        except ControlImageError as e:
            row.error = str(e)

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
        # 1. Read this shard's rows; invalid ones become error records.
        rows = rows_from_table(self.reader.read(shard), shard, self.spec)
        if self.controls is not None:
            list(self.pool.map(self._load_control, [r for r in rows if r.error is None]))
        valid = [r for r in rows if r.error is None]
        read_s = time.perf_counter() - started
        with ShardWriter(self.out, shard, self.spec, self.pool, max_pending=4 * ENCODE_THREADS) as writer:
            for row in rows:
                if row.error is not None:
                    writer.add_error(row)
            # 2. Render valid rows; encodes overlap the next pipeline call. A row the
            #    pipeline raised on comes back as a Row with its error.
            failed_in_pipeline: list[Row] = []
            pipeline_s = 0.0
            for result in self.renderer.render(valid):
                if isinstance(result, Row):
                    failed_in_pipeline.append(result)
                    writer.add_error(result)
                else:
                    pipeline_s += result.render_ms / 1000  # per row: its call's time / rows in the call
                    writer.add_image(result)
            _check_not_all_failed(valid, failed_in_pipeline)
            render_s = time.perf_counter() - started - read_s
            # 3. Flush images, write metadata, then the done marker. The timings say where the
            #    shard's time went: "pipeline" is the device's share, the rest is overhead.
            timings = {"read": read_s, "render": render_s, "pipeline": pipeline_s, "writer_wait": writer.wait_s}
            return writer.commit(timings, started)


class PipelineFailedEveryRow(RuntimeError):
    """Every row of a shard made the pipeline raise: a broken worker, not bad rows."""


def _check_not_all_failed(valid: list[Row], failed: list[Row]) -> None:
    """Fail the shard (uncommitted, so a rerun retries it) rather than commit only errors.

    One bad row fails alone; but when every one of several rows fails, the cause is the
    pipeline or the machine, and committing would turn that into permanent row errors.
    """
    if len(valid) >= 2 and len(failed) == len(valid):
        raise PipelineFailedEveryRow(f"the pipeline raised on all {len(valid)} rows; first: {failed[0].error}")
