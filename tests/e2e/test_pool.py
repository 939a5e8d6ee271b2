"""Elastic render actors (jobs/run/pool.py) on real Ray clusters: a `ray start --head` and raylets
joined with `ray start --address`, one CPU each, their own temp dirs and ports (tests/raycluster.py).

Rendering starts with the actors that fit and grows as a node joins; a draining node gets no new
shards and its shards cost no retry; actors that can never be placed stop the job within the stall
timeout; a crash loop at start-up stops the replacements. Every time: every row once, and the same
bytes as a reference run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import REPO, write_parquet
from tests.helpers import (
    assert_complete_and_clean,
    done_count,
    image_digests,
    processes_titled,
    wait_for,
)
from tests.raycluster import BIN, Head, started_head, started_worker_node
from turbobatch import faults
from turbobatch.jobs.cli import render_main as main
from turbobatch.jobs.run.pool import CRASH_LOOP_STARTS, INFLIGHT_PER_ACTOR

SMALL = ["--model", "tiny-sd-turbo", "--height", "32", "--width", "32", "--shard-size", "4"]
PROMPTS = [f"prompt {i} 🎨" if i % 5 else "" for i in range(48)]  # 12 shards
SLOW_ROWS = {faults.ENV: json.dumps({"delay_s": 0.5})}  # 2 s of pipeline per shard: nodes come and go mid-run


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    return write_parquet(tmp_path_factory.mktemp("in") / "prompts.parquet", {"prompt": PROMPTS}, row_group_size=7)


@pytest.fixture(scope="module")
def reference(prompts: Path, tmp_path_factory) -> dict[str, str]:
    """Image digests of an uninterrupted run: one 1-CPU actor on a Ray of the driver's own."""
    out = tmp_path_factory.mktemp("reference") / "out"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, "-m", "turbobatch", "render", str(prompts), str(out), *SMALL, "--worker-cpus", "1"]
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return image_digests(out)


class Driver:
    """`python -m turbobatch render` against ``head``, its stderr in a file readable mid-run."""

    def __init__(self, head: Head, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        env = {
            **head.env,
            "RAY_ADDRESS": head.gcs_address,
            "TURBOBATCH_CACHE": os.environ["TURBOBATCH_CACHE"],
            "HF_HUB_OFFLINE": "1",
            **(env or {}),
        }
        with log.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "turbobatch", "render", *args],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )

    def finish(self, timeout_s: float = 600) -> tuple[int, str, str]:
        """Wait for the driver: (exit code, stdout, stderr)."""
        try:
            stdout, _ = self.proc.communicate(timeout=timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        return self.proc.returncode, stdout, self.log.read_text()


def markers(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "_done").glob("*.json"))]


def resource_request(head: Head) -> list[dict]:
    """The autoscaler resource request the cluster holds (Ray's v1 format: a JSON list of bundles)."""
    probe = (
        "import json, ray; from ray.experimental.internal_kv import _internal_kv_get; "
        "from ray.autoscaler._private.constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL as K; "
        "ray.init(logging_level='ERROR'); "
        "print(json.dumps(json.loads(_internal_kv_get(K) or b'[]')))"
    )
    env = {**head.env, "RAY_ADDRESS": head.gcs_address}
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_rendering_starts_with_one_actor_and_a_joined_node_gets_one(prompts, reference, tmp_path):
    """--workers 3 on a head with room for one: rendering starts with one actor; a raylet joined
    mid-run gets a second that commits shards (its node id in their markers); the third never fits."""
    out = tmp_path / "out"
    with started_head(num_cpus=1) as head:
        driver = Driver(
            head,
            [str(prompts), str(out), *SMALL, "--workers", "3", "--worker-cpus", "1"],
            tmp_path / "driver.err",
            env={faults.ENV: json.dumps({"delay_s": 1.0})},
        )
        wait_for(lambda: done_count(out) >= 1, 180, "a first committed shard, on the head")
        head_node = markers(out)[0]["node_id"]
        assert resource_request(head) == [{"CPU": 1}] * 3  # the autoscaler is asked for all three
        with started_worker_node(head, num_cpus=1) as node:
            joined = node.node_id()
            rc, stdout, stderr = driver.finish()
            assert rc == 0, stderr[-3000:]
        assert resource_request(head) == []  # withdrawn at the end: nothing held after the last shard
    assert "the cluster has room for 1 of 3 render actors of {'CPU': 1} now" in stderr
    assert "workers 1 ready / 2 starting" in stderr and "workers 2 ready / 1 starting" in stderr, stderr[-3000:]
    by_node = {m["node_id"] for m in markers(out)}
    assert by_node == {head_node, joined}, (by_node, head_node, joined)
    assert all(isinstance(m["pid"], int) and m["worker"] for m in markers(out))
    assert "shards: 12/12 committed" in stdout
    assert_complete_and_clean(out, 12, len(PROMPTS))
    assert image_digests(out) == reference


def _drain(head: Head, node_id: str, deadline_s: int) -> datetime:
    """`ray drain-node` as a spot preemption notice; returns the time (UTC) the drain took effect:
    when the command returned (the GCS has accepted it). The CLI takes seconds to start on this
    machine, and until it has spoken to the GCS the node is not draining: shards handed to it
    then are not shards given to a draining node."""
    head.ray(
        "drain-node",
        "--address",
        head.gcs_address,
        "--node-id",
        node_id,
        "--reason",
        "DRAIN_NODE_REASON_PREEMPTION",
        "--reason-message",
        "spot preemption (test)",
        "--deadline-remaining-seconds",
        str(deadline_s),
    )
    return datetime.now(UTC)


@pytest.mark.slow
def test_a_preempted_node_gets_no_new_shards_and_its_shards_cost_no_retry(prompts, reference, tmp_path):
    """Drain (5 s deadline) the node of a busy actor, SIGKILL it after the deadline: the job ends
    0 with every row once, no failed shard and no retry used (--max-retries 0 would fail it)."""
    out = tmp_path / "out"
    with started_head(num_cpus=1) as head, started_worker_node(head, num_cpus=1) as node:
        victim = node.node_id()
        wait_for(lambda: "/2.0 CPU" in head.ray("status", "--address", head.gcs_address), 60, "the second node")
        driver = Driver(
            head,
            [str(prompts), str(out), *SMALL, "--workers", "2", "--worker-cpus", "1", "--max-retries", "0"],
            tmp_path / "driver.err",
            env=SLOW_ROWS,
        )
        wait_for(
            lambda: processes_titled("ray::RenderWorker.render_shard", session=node.pid),
            180,
            "an actor on the worker node inside render_shard",
        )
        drained_at = _drain(head, victim, deadline_s=5)
        time.sleep(6)  # past the deadline: the machine goes away
        node.kill()
        rc, stdout, stderr = driver.finish()
    assert rc == 0, stderr[-3000:]
    assert f"node {victim[:12]} " in stderr and "is draining (deadline in" in stderr, stderr[-3000:]
    assert "retry" not in stderr.replace("not counted as a retry", ""), stderr[-3000:]
    assert "shards: 12/12 committed" in stdout and "0 failed" in stdout
    late = [
        m for m in markers(out) if m["node_id"] == victim and datetime.fromisoformat(m["committed_at"]) > drained_at
    ]
    assert len(late) <= INFLIGHT_PER_ACTOR, late  # only shards already in flight, never a new one
    assert_complete_and_clean(out, 12, len(PROMPTS))
    assert image_digests(out) == reference


@pytest.mark.slow
def test_in_flight_shards_of_a_draining_node_finish_before_a_long_deadline(prompts, reference, tmp_path):
    """With time left before the deadline, the draining node's in-flight shards commit there
    (nothing requeued); then its actor is released and the rest goes to the head."""
    out = tmp_path / "out"
    with started_head(num_cpus=1) as head, started_worker_node(head, num_cpus=1) as node:
        victim = node.node_id()
        wait_for(lambda: "/2.0 CPU" in head.ray("status", "--address", head.gcs_address), 60, "the second node")
        driver = Driver(
            head,
            [str(prompts), str(out), *SMALL, "--workers", "2", "--worker-cpus", "1", "--max-retries", "0"],
            tmp_path / "driver.err",
            env=SLOW_ROWS,
        )
        wait_for(
            lambda: any(m["node_id"] == victim for m in markers(out)) and done_count(out) >= 2,
            180,
            "committed shards, one of them on the worker node",
        )
        drained_at = _drain(head, victim, deadline_s=300)
        rc, stdout, stderr = driver.finish()
    assert rc == 0, stderr[-3000:]
    assert "is draining (deadline in" in stderr, stderr[-3000:]
    assert f"released the render worker on draining node {victim[:12]}: its shards are done" in stderr
    assert "requeued" not in stderr, stderr[-3000:]
    late = [
        m for m in markers(out) if m["node_id"] == victim and datetime.fromisoformat(m["committed_at"]) > drained_at
    ]
    assert len(late) <= INFLIGHT_PER_ACTOR, late
    assert_complete_and_clean(out, 12, len(PROMPTS))
    assert image_digests(out) == reference


@pytest.mark.slow
def test_actors_that_can_never_be_placed_stop_the_job_within_the_stall_timeout(prompts, tmp_path):
    out = tmp_path / "out"
    with started_head(num_cpus=1) as head:
        driver = Driver(
            head,
            [str(prompts), str(out), *SMALL, "--workers", "2", "--worker-cpus", "4", "--stall-timeout", "15"],
            tmp_path / "driver.err",
        )
        rc, _, stderr = driver.finish(timeout_s=300)
        assert resource_request(head) == []
    assert rc == 1, stderr[-3000:]
    assert "the cluster has room for 0 of 2 render actors of {'CPU': 4} now" in stderr
    assert (
        "error: stalled for 15 s (--stall-timeout 15): no render actor ready; 0 of 1 (--min-workers) actors "
        "ready; 2 render actors pending: no node of the cluster has {'CPU': 4} (its nodes have {'CPU': 1})"
    ) in stderr
    assert "committed shards are kept; run the same command again to resume" in stderr
    assert done_count(out) == 0


@pytest.mark.slow
def test_a_crash_loop_at_start_up_stops_the_replacements_with_its_cause(
    ray_cluster, prompts, tmp_path, monkeypatch, capsys
):
    """Every actor's process is SIGKILLed while it loads (as the OOM killer does): after
    CRASH_LOOP_STARTS deaths in a row no replacement starts, and the job says why."""
    monkeypatch.setenv(faults.ENV, json.dumps({"kill_on_start": True}))
    assert main([str(prompts), str(tmp_path / "out"), *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.count("turbobatch: a render worker could not start (ActorDiedError") == CRASH_LOOP_STARTS - 1, err
    assert (
        f"error: workers: the render actors could not start ({CRASH_LOOP_STARTS} render actors in a row died "
        "while starting; the last: ActorDiedError"
    ) in err, err
    assert done_count(tmp_path / "out") == 0


@pytest.mark.slow
def test_the_ray_cli_used_here_exists():
    """`ray drain-node` is hidden from `ray --help`: fail clearly if a Ray upgrade drops it."""
    result = subprocess.run([str(BIN / "ray"), "drain-node", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "--deadline-remaining-seconds" in result.stdout
