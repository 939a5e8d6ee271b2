"""The real-Ray half of tests/unit/test_metrics.py: what only a running cluster shows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import write_parquet
from tests.helpers import corrupt_parquet
from tests.raycluster import started_head
from tests.unit.test_metrics import _all_series, _poll, _watch_while_running, samples, total
from turbobatch import faults, metrics


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
    args = [
        str(data),
        str(out),
        "--model",
        "tiny-sd-turbo",
        "--shard-size",
        "4",
        "--height",
        "32",
        "--width",
        "32",
        "--workers",
        "1",
    ]
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
        assert (expected["ray_turbobatch_images_rendered_total"], expected["ray_turbobatch_rows_errored_total"]) == (
            23,
            1,
        )
        text = _poll(
            head,
            lambda t: (
                all(total(t, n) == v for n, v in expected.items())
                and all(total(t, "ray_turbobatch_stage_seconds_count", stage=s) == 6 for s in metrics.STAGES)
            ),
            what=f"the counts {expected} and 6 shards per stage histogram",
        )

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
