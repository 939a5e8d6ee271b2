"""A running job's metrics in Ray's metrics system (Prometheus): every definition, in one place.

Recorded with ``ray.util.metrics`` where the events happen. The driver (jobs/run/schedule.py) counts
shards committed, failed and retried and sets the render actors ready and starting; each render
actor (workers/actor.py) counts the images and error rows of the shards it commits and records its
images/s, the share of its device time in pipeline calls and each shard's time per stage.

Ray's metrics agent on every node (``ray start --metrics-export-port P``, default 8080) serves them
at ``:P/metrics`` and Ray's dashboard and Grafana read them from there. Ray adds its ``ray_``
namespace and Prometheus' suffixes: the Counter ``turbobatch_images_rendered`` is scraped as
``ray_turbobatch_images_rendered_total``, the Histogram ``turbobatch_stage_seconds`` as
``ray_turbobatch_stage_seconds_bucket`` / ``_count`` / ``_sum`` (its ``_sum`` approximated from the
bucket midpoints), a Gauge under its own name. Ray adds the labels ``NodeAddress``, ``WorkerId``,
``SessionName``, ``Component`` and ``Version``; ours are ``ray_job`` (Ray's job id, as ``ray job list``
shows it; not ``job``, which Prometheus sets to its scrape job), ``model``, ``node``
(the Ray node id's first 12 hex digits, as ``turbobatch status`` shows it) and, per worker,
``worker`` (its pid) and ``device`` (its GPU kind, or cpu). Never a prompt, a key or a storage option.

What Ray does with them, seen with Ray 2.60 (tests/unit/test_metrics.py checks the counts): each
process sends its values to its node's agent every ``metrics_report_interval_ms`` (10 s), and what
it recorded just before it exits or is killed still arrives. The agent keeps counters and
histograms after the process is gone; a gauge not set again for two intervals (20 s) disappears,
so both sides set their gauges again every few seconds while they live.

Ray is optional on the worker side: the RenderWorker class also runs without Ray (the GPU benchmark
machine has none), so ``ray.util.metrics`` is imported only when this process runs under Ray, and
``WorkerMetrics.start`` returns None otherwise (nothing is recorded: there is nowhere to send it).
"""

from __future__ import annotations

import sys
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

PREFIX = "turbobatch_"
# Stage times of one shard, seconds: read, pipeline calls, waiting for encodes, commit.
STAGES = {"read": "read", "pipeline": "pipeline", "encode_wait": "writer_wait", "commit": "commit"}
STAGE_BOUNDARIES = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800]
GAUGE_REFRESH_S = 5.0  # under Ray's 20 s gauge lifetime without a new value
RETRY_CAUSES = ("retry", "drained", "node lost")  # backoff after a failure; requeued, not counted

# name -> (kind, description, tag keys); the Prometheus names follow from them (exported_names).
DRIVER_TAGS = ("ray_job", "model")  # not "job": Prometheus keeps that for its scrape job
WORKER_TAGS = ("ray_job", "model", "node", "device")
DEFINITIONS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "turbobatch_shards_committed": (
        "counter",
        "Shards committed (done marker written), by the node that rendered",
        (*DRIVER_TAGS, "node"),
    ),
    "turbobatch_shards_failed": (
        "counter",
        "Shards failed for good (a _failed/ marker; the next run retries them)",
        DRIVER_TAGS,
    ),
    "turbobatch_shards_retried": (
        "counter",
        "Shard attempts given again: after an infrastructure failure "
        "(cause retry), or requeued from a drained or lost node (not counted as retries)",
        (*DRIVER_TAGS, "cause"),
    ),
    "turbobatch_actors_ready": ("gauge", "Render actors ready and taking shards", DRIVER_TAGS),
    "turbobatch_actors_starting": ("gauge", "Render actors starting (placed or waiting for room)", DRIVER_TAGS),
    "turbobatch_images_rendered": ("counter", "Images rendered and committed (ok metadata rows)", WORKER_TAGS),
    "turbobatch_rows_errored": (
        "counter",
        "Error metadata rows committed (bad rows, rows the pipeline raised on)",
        WORKER_TAGS,
    ),
    "turbobatch_pipeline_seconds": (
        "counter",
        "Device time in pipeline calls (decode, stats and copy included)",
        WORKER_TAGS,
    ),
    "turbobatch_device_seconds": ("counter", "Device time held by shards or idle before one took it", WORKER_TAGS),
    "turbobatch_worker_images_per_second": (
        "gauge",
        "A worker's images/s over its last shard: ok images / (device time held + idle before it)",
        (*WORKER_TAGS, "worker"),
    ),
    "turbobatch_worker_pipeline_share": (
        "gauge",
        "A worker's share of device time in pipeline calls, since it started (0..1)",
        (*WORKER_TAGS, "worker"),
    ),
    "turbobatch_stage_seconds": (
        "histogram",
        "Seconds per shard in each stage: read, pipeline (calls), encode_wait (blocked on the encode queue), commit",
        (*WORKER_TAGS, "stage"),
    ),
}


def exported_names() -> dict[str, list[str]]:
    """Definition name -> the series names Ray's Prometheus export gives it."""
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_count", "_sum"]}
    return {name: [f"ray_{name}{s}" for s in suffixes[kind]] for name, (kind, _, _) in DEFINITIONS.items()}


def model_tag(model: str) -> str:
    """The model as a tag: a URL without user info, query or fragment (never a credential)."""
    if "://" not in model:
        return model
    parts = urlsplit(model)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def node_tag(node_id: str | None) -> str:
    return node_id[:12] if node_id else "none"


def _make(name: str) -> Any:
    from ray.util import metrics

    kind, description, tags = DEFINITIONS[name]
    if kind == "histogram":
        return metrics.Histogram(name, description, boundaries=STAGE_BOUNDARIES, tag_keys=tags)
    return (metrics.Counter if kind == "counter" else metrics.Gauge)(name, description, tag_keys=tags)


def _ray_job_id() -> str:
    import ray

    return ray.get_runtime_context().get_job_id() or "none"


class _Refresher:
    """Sets gauges again every GAUGE_REFRESH_S to their last values, so Ray keeps them."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[Any, float]] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def set(self, gauge: Any, name: str, value: float, tags: dict[str, str]) -> None:
        gauge.set(value, tags=tags)
        with self.lock:
            self.values[(name, tuple(sorted(tags.items())))] = (gauge, value)
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="metrics-gauges", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(GAUGE_REFRESH_S):
            with self.lock:
                values = list(self.values.items())
            for (_, tags), (gauge, value) in values:
                gauge.set(value, tags=dict(tags))


class DriverMetrics:
    """The driver's metrics for one run (create once Ray is up)."""

    def __init__(self, model: str) -> None:
        self.tags = {"ray_job": _ray_job_id(), "model": model_tag(model)}
        self.committed = _make("turbobatch_shards_committed")
        self.failed = _make("turbobatch_shards_failed")
        self.retried = _make("turbobatch_shards_retried")
        self.ready = _make("turbobatch_actors_ready")
        self.starting = _make("turbobatch_actors_starting")
        self.gauges = _Refresher()

    def shard_committed(self, marker: dict[str, Any]) -> None:
        self.committed.inc(1, tags={**self.tags, "node": node_tag(marker.get("node_id"))})

    def shard_failed(self) -> None:
        self.failed.inc(1, tags=self.tags)

    def shard_retried(self, cause: str) -> None:
        self.retried.inc(1, tags={**self.tags, "cause": cause})

    def actors(self, ready: int, starting: int) -> None:
        self.gauges.set(self.ready, "ready", ready, self.tags)
        self.gauges.set(self.starting, "starting", starting, self.tags)

    def close(self) -> None:
        """The run is over: no actor left (sent with the driver's last report), no more refreshes."""
        self.gauges.stop.set()
        self.ready.set(0, tags=self.tags)
        self.starting.set(0, tags=self.tags)


class WorkerMetrics:
    """A render actor's metrics: recorded once per committed shard, from its done marker."""

    def __init__(self, model: str, node_id: str | None, device_kind: str, pid: int) -> None:
        self.tags = {
            "ray_job": _ray_job_id(),
            "model": model_tag(model),
            "node": node_tag(node_id),
            "device": device_kind,
        }
        self.worker_tags = {**self.tags, "worker": str(pid)}
        self.images = _make("turbobatch_images_rendered")
        self.errors = _make("turbobatch_rows_errored")
        self.pipeline_s = _make("turbobatch_pipeline_seconds")
        self.device_s = _make("turbobatch_device_seconds")
        self.rate = _make("turbobatch_worker_images_per_second")
        self.share = _make("turbobatch_worker_pipeline_share")
        self.stages = _make("turbobatch_stage_seconds")
        self.gauges = _Refresher()
        self.pipeline_total = 0.0
        self.device_total = 0.0
        self.lock = threading.Lock()  # two shards commit at once

    @classmethod
    def start(cls, model: str, origin: dict[str, Any]) -> WorkerMetrics | None:
        """The worker's metrics when this process runs under Ray, else None (without importing Ray)."""
        ray = sys.modules.get("ray")
        if ray is None or not ray.is_initialized():
            return None
        return cls(model, origin.get("node_id"), origin.get("device_kind") or "unknown", origin["pid"])

    def shard_committed(self, marker: dict[str, Any]) -> None:
        t = marker.get("timings_s", {})
        if marker.get("ok"):
            self.images.inc(marker["ok"], tags=self.tags)
        if marker.get("error"):
            self.errors.inc(marker["error"], tags=self.tags)
        for stage, key in STAGES.items():
            if key in t:
                self.stages.observe(max(0.0, float(t[key])), tags={**self.tags, "stage": stage})
        pipeline = float(t.get("pipeline", 0.0))
        device = float(t.get("render", 0.0)) + float(t.get("device_idle_before", 0.0))
        if pipeline > 0:
            self.pipeline_s.inc(pipeline, tags=self.tags)
        if device > 0:
            self.device_s.inc(device, tags=self.tags)
            self.gauges.set(self.rate, "rate", marker.get("ok", 0) / device, self.worker_tags)
        with self.lock:
            self.pipeline_total += pipeline
            self.device_total += device
            share = self.pipeline_total / self.device_total if self.device_total > 0 else None
        if share is not None:
            self.gauges.set(self.share, "share", share, self.worker_tags)
