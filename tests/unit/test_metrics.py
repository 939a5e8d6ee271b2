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

from tests.conftest import REPO
from tests.helpers import done_count, processes_titled, wait_for
from tests.raycluster import Head
from turbobatch import metrics

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


def _watch_while_running(head: Head, out: Path) -> dict[str, float]:
    """Kill the first actor in its first shard (before any commit: a SIGKILLed process's last
    10 s of metrics never reach the agent, while its shards are redone and counted by the next),
    then until the job's sixth shard commits keep the largest value each gauge had on the agent."""
    import os
    import signal

    gauges = (
        "ray_turbobatch_actors_ready",
        "ray_turbobatch_worker_images_per_second",
        "ray_turbobatch_worker_pipeline_share",
    )
    busy: list[int] = []
    wait_for(
        lambda: busy.extend(processes_titled("ray::RenderWorker.render_shard", session=head.session)) or busy,
        240,
        "the first actor inside render_shard",
    )
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
    assert (
        metrics.model_tag("https://user:pa55@host.example:8443/m?X-Amz-Signature=abc#x")
        == "https://host.example:8443/m"
    )
    assert metrics.node_tag("ab" * 28) == "ab" * 6 and metrics.node_tag(None) == "none"
    names = metrics.exported_names()
    assert all(n.startswith(metrics.PREFIX) for n in names)
    assert names["turbobatch_images_rendered"] == ["ray_turbobatch_images_rendered_total"]
    assert names["turbobatch_actors_ready"] == ["ray_turbobatch_actors_ready"]
    assert names["turbobatch_stage_seconds"] == [
        "ray_turbobatch_stage_seconds_bucket",
        "ray_turbobatch_stage_seconds_count",
        "ray_turbobatch_stage_seconds_sum",
    ]
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
            names = set(
                re.findall(r"(?<![$\w])(ray_[a-zA-Z0-9_]+)\b(?!\s*[=!]~?)", target["expr"])
            )  # not the ray_job label or $ray_job
            assert names and names <= exported, (panel["title"], names - exported)
            used |= names
    # Every metric shows somewhere: each definition has at least one of its series on a panel.
    missing = [name for name, series in metrics.exported_names().items() if not set(series) & used]
    assert not missing, missing
