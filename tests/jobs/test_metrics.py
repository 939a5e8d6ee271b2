"""Ray metrics (turbobatch/metrics.py): a job submitted to a real `ray start --head --metrics-export-port`
exports its `turbobatch_` counts on that port; the Grafana dashboard reads only series that exist.

Ray's export is periodic (every 10 s, per process, to its node's agent), so the test polls the
agent's Prometheus text over HTTP with a generous timeout until the counts are there.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from turbobatch import metrics
from tests.conftest import REPO, write_parquet
from tests.helpers import corrupt_parquet, done_count, processes_titled, wait_for
from tests.raycluster import Head, started_head
from turbobatch import faults

DASHBOARD = REPO / "deploy" / "grafana-dashboard.json"
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of series ``name`` in Prometheus text."""
    found = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) == name:
            found.append((dict(_LABEL.findall(match.group(2) or "")), float(match.group(3))))
    return found


def total(text: str, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels`` (one per process)."""
    return sum(v for l, v in samples(text, name) if all(l.get(k) == want for k, want in labels.items()))


# --------------------------------------------------------------------------- a real head


@pytest.mark.slow
def test_a_submitted_job_exports_its_counts_on_the_metrics_port(tiny_model_dir: Path, tmp_path: Path) -> None:
    """24 good rows (one null prompt) in shards of 4 and a file whose data is corrupt (its shard
    fails); the first actor is SIGKILLed in its first shard (its shards are retried). While the job runs the
    agent shows a ready actor and a worker's images/s; after it, the counters equal the output's."""
    data = tmp_path / "data"
    prompts = [None if i == 5 else f"a metric prompt {i}" for i in range(24)]
    write_parquet(data / "a-good.parquet", {"prompt": prompts})
    corrupt_parquet(data / "b-corrupt.parquet", [f"a corrupted prompt {i}" for i in range(4)])
    out = tmp_path / "out"
    args = [str(data), str(out), "--model", "tiny-sd-turbo", "--shard-size", "4", "--height", "32", "--width", "32",
            "--workers", "1"]  # fmt: skip
    with started_head(num_cpus=2) as head:
        # 0.8 s per row: the replacement actor renders for ~20 s, two of Ray's 10 s reports, so the
        # agent sees its ready gauge even when the machine is busy (0.3 s missed it under load).
        job_id = head.submit(*args, env={faults.ENV: json.dumps({"delay_s": 0.8})})
        seen = _watch_while_running(head, out)
        status, status_out, logs = head.follow(job_id)
        assert status == "FAILED" and "exit code 1" in status_out, f"{status_out}\n{logs}"  # the corrupt shard
        markers = [json.loads(p.read_text()) for p in sorted((out / "_done").glob("*.json"))]
        assert len(markers) == 6
        retries = len(re.findall(r"; retry \d+/\d+ in ", logs))
        assert retries >= 1, logs  # the killed actor's in-flight shards
        expected = {
            "ray_turbobatch_images_rendered_total": sum(m["ok"] for m in markers),  # 23
            "ray_turbobatch_rows_errored_total": sum(m["error"] for m in markers),  # 1: the null prompt
            "ray_turbobatch_shards_committed_total": 6,
            "ray_turbobatch_shards_failed_total": 1,
            "ray_turbobatch_shards_retried_total": retries,
        }
        assert (expected["ray_turbobatch_images_rendered_total"], expected["ray_turbobatch_rows_errored_total"]) == (23, 1)
        text = _poll(head, lambda t: all(total(t, n) == v for n, v in expected.items())
                     and all(total(t, "ray_turbobatch_stage_seconds_count", stage=s) == 6 for s in metrics.STAGES),
                     what=f"the counts {expected} and 6 shards per stage histogram")  # fmt: skip

    print(f"scraped: {expected}; gauges seen while running: {seen}")
    # Labels: the job, the model, the node of each shard (its marker's), Ray's own; never a prompt.
    assert total(text, "ray_turbobatch_shards_retried_total", cause="retry") == retries
    assert total(text, "ray_turbobatch_pipeline_seconds_total") > 0
    assert total(text, "ray_turbobatch_device_seconds_total") >= total(text, "ray_turbobatch_pipeline_seconds_total")
    nodes = {m["node_id"][:12] for m in markers}
    assert {l["node"] for l, v in samples(text, "ray_turbobatch_shards_committed_total") if v} == nodes
    assert {l["node"] for l, v in samples(text, "ray_turbobatch_images_rendered_total") if v} == nodes
    ours = [(n, l) for n in _all_series(text) if n.startswith("ray_turbobatch_") for l, _ in samples(text, n)]
    assert {l["model"] for _, l in ours} == {"tiny-sd-turbo"}
    assert len({l["ray_job"] for _, l in ours}) == 1, "one job on this head"
    assert {l["device"] for n, l in ours if "device" in l} == {"cpu"}
    names = {n for n, _ in ours}
    assert names <= {s for series in metrics.exported_names().values() for s in series}, names
    texts = [p for p in pq.read_table(data / "a-good.parquet")["prompt"].to_pylist() if p]
    assert not any(p in text for p in texts) and "a metric prompt" not in text

    # Seen while the job ran: a ready actor, a worker's images/s and its pipeline share.
    assert seen["ray_turbobatch_actors_ready"] >= 1, seen
    assert seen["ray_turbobatch_worker_images_per_second"] > 0, seen
    assert 0 < seen["ray_turbobatch_worker_pipeline_share"] <= 1, seen


def _watch_while_running(head: Head, out: Path) -> dict[str, float]:
    """Kill the first actor in its first shard (before any commit: a SIGKILLed process's last
    10 s of metrics never reach the agent, while its shards are redone and counted by the next),
    then until the job's sixth shard commits keep the largest value each gauge had on the agent."""
    import os
    import signal

    gauges = ("ray_turbobatch_actors_ready", "ray_turbobatch_worker_images_per_second",
              "ray_turbobatch_worker_pipeline_share")  # fmt: skip
    busy: list[int] = []
    wait_for(lambda: busy.extend(processes_titled("ray::RenderWorker.render_shard", session=head.session)) or busy,
             240, "the first actor inside render_shard")  # fmt: skip
    assert done_count(out) == 0
    os.kill(busy[0], signal.SIGKILL)
    seen = dict.fromkeys(gauges, 0.0)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (done_count(out) >= 6 and all(seen.values())):
        text = head.metrics()
        for name in gauges:
            seen[name] = max([seen[name], *(v for _, v in samples(text, name))])
        time.sleep(1)
    return seen


def _poll(head: Head, ok, what: str, timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        text = head.metrics()
        if ok(text):
            return text
        if time.monotonic() > deadline:
            ours = "\n".join(line for line in text.splitlines() if "turbobatch" in line and not line.startswith("#"))
            raise AssertionError(f"no {what} after {timeout_s} s on the metrics port:\n{ours}")
        time.sleep(2)


def _all_series(text: str) -> set[str]:
    return {m.group(1) for line in text.splitlines() if (m := _SAMPLE.match(line))}


# --------------------------------------------------------------------------- definitions, no Ray


def test_tags_never_carry_a_credential_and_names_follow_rays_export() -> None:
    assert metrics.model_tag("stabilityai/sd-turbo") == "stabilityai/sd-turbo"
    assert metrics.model_tag("s3://bucket/models/sd-turbo/") == "s3://bucket/models/sd-turbo/"
    assert metrics.model_tag("https://user:pa55@host.example:8443/m?X-Amz-Signature=abc#x") == \
        "https://host.example:8443/m"
    assert metrics.node_tag("ab" * 28) == "ab" * 6 and metrics.node_tag(None) == "none"
    names = metrics.exported_names()
    assert all(n.startswith(metrics.PREFIX) for n in names)
    assert names["turbobatch_images_rendered"] == ["ray_turbobatch_images_rendered_total"]
    assert names["turbobatch_actors_ready"] == ["ray_turbobatch_actors_ready"]
    assert names["turbobatch_stage_seconds"] == ["ray_turbobatch_stage_seconds_bucket",
                                                 "ray_turbobatch_stage_seconds_count", "ray_turbobatch_stage_seconds_sum"]
    for _, _, tags in metrics.DEFINITIONS.values():
        assert {"ray_job", "model"} <= set(tags) and not set(tags) & {"job", "instance", "prompt", "key", "seed"}


def test_the_grafana_dashboard_is_valid_and_reads_only_exported_series() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    [datasource] = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert datasource["query"] == "prometheus"
    exported = {s for series in metrics.exported_names().values() for s in series}
    used: set[str] = set()
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 8
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"]["uid"] == "${" + datasource["name"] + "}", panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"(?<![$\w])(ray_[a-zA-Z0-9_]+)\b(?!\s*[=!]~?)", target["expr"]))  # not the ray_job label or $ray_job
            assert names and names <= exported, (panel["title"], names - exported)
            used |= names
    # Every metric shows somewhere: each definition has at least one of its series on a panel.
    missing = [name for name, series in metrics.exported_names().items() if not set(series) & used]
    assert not missing, missing
