"""jobs/run/schedule.py's logic against a fake pool (tests/fakepool.py): no Ray, milliseconds each.
What only a real cluster shows (actors dying, nodes draining in Ray's GCS) stays in test_pool.py
and test_fault_tolerance.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakepool import OK, FakePool, RecordingMetrics, shards
from turbobatch.errors import InfrastructureError, JobError, JobStalled
from turbobatch.jobs.run import nodes, schedule
from turbobatch.jobs.run.progress import Progress
from turbobatch.jobs.run.schedule import ShardScheduler
from turbobatch.output import layout
from turbobatch.output.storage import Folder
from turbobatch.spec.job import JobSpec


def run(tmp_path: Path, pool: FakePool, n: int = 6, previously_failed: set[int] = frozenset(), **spec_fields):
    spec = JobSpec(input="in.parquet", output=str(tmp_path), **{"workers": pool.actors, **spec_fields})
    progress = Progress(n, 0, n * 4)
    metrics = RecordingMetrics()
    scheduler = ShardScheduler(
        spec, Folder(str(tmp_path)), progress, set(previously_failed), pool, metrics, clock=pool.clock
    )
    try:
        scheduler.run(shards(n))
    finally:
        progress.close()
    return scheduler, progress, metrics


def committed(metrics: RecordingMetrics) -> list[int]:
    return [shard for event, shard in metrics.events if event == "committed"]


def sent(pool: FakePool, shard_id: int) -> int:
    return sum(s == shard_id for _, s in pool.submitted)


def test_every_shard_commits_once_in_plan_order(tmp_path: Path) -> None:
    pool = FakePool(actors=2, inflight=2)
    scheduler, progress, metrics = run(tmp_path, pool, n=9)
    assert [s for _, s in pool.submitted] == list(range(9))
    assert sorted(committed(metrics)) == list(range(9)) and progress.committed == 9
    assert max(pool.busy.values()) == 0 and metrics.events[-1] == ("closed", None)
    assert scheduler.attempts == {}  # nothing kept per finished shard


def test_each_actor_holds_at_most_its_inflight_shards(tmp_path: Path) -> None:
    seen = []
    pool = FakePool(actors=3, inflight=2)
    original = pool.wait

    def wait(running, timeout):
        seen.append(len(running))
        return original(running, timeout)

    pool.wait = wait
    run(tmp_path, pool, n=20)
    assert max(seen) == 6 and seen.count(6) > 5


def test_nothing_is_sent_before_min_workers_are_ready(tmp_path: Path) -> None:
    pool = FakePool(actors=2, start_waits=3)
    run(tmp_path, pool, n=4, min_workers=2)
    assert pool.first_submit_wait == 4 and len(pool.submitted) == 4  # the actors joined on the 4th wait


def test_a_drained_or_lost_node_requeues_its_shard_first_and_uncounted(tmp_path: Path) -> None:
    lost = (nodes.NODE_LOST, ConnectionError("node gone"))
    drained = (nodes.DRAINED, ConnectionError("preempted"))
    pool = FakePool(actors=1, inflight=1, script={1: [lost, drained, OK]})
    scheduler, progress, metrics = run(tmp_path, pool, n=3, max_retries=0)
    assert [s for _, s in pool.submitted] == [0, 1, 1, 1, 2]  # back to the front of the queue each time
    assert sorted(committed(metrics)) == [0, 1, 2] and progress.failed == []
    assert ("retried", nodes.NODE_LOST) in metrics.events and ("retried", nodes.DRAINED) in metrics.events
    assert not list(tmp_path.glob("_failed/*"))


def test_infrastructure_failures_are_retried_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schedule, "backoff_s", lambda attempt: 5.0)
    timeout = InfrastructureError("storage timed out")
    pool = FakePool(actors=1, inflight=1, script={0: [timeout, timeout, OK], 1: [timeout]})
    scheduler, progress, metrics = run(tmp_path, pool, n=2, max_retries=2)
    assert sent(pool, 0) == 3 and sent(pool, 1) == 3
    assert committed(metrics) == [0]
    failed = Folder(str(tmp_path)).read_json(layout.failed_path(1))
    assert failed["attempts"] == 3 and failed["infrastructure"] is True
    assert metrics.events.count(("retried", "retry")) == 4


def test_a_bug_is_never_retried(tmp_path: Path) -> None:
    pool = FakePool(actors=1, inflight=1, script={0: [ValueError("bad column")]})
    scheduler, progress, _ = run(tmp_path, pool, n=2, max_retries=5)
    assert [s for _, s in pool.submitted] == [0, 1] and progress.failed[0].attempts == 1
    failed = Folder(str(tmp_path)).read_json(layout.failed_path(0))
    assert failed["infrastructure"] is False and "bad column" in failed["error"]


def test_a_committed_retry_clears_the_previous_runs_failed_marker(tmp_path: Path) -> None:
    out = Folder(str(tmp_path))
    out.write_json(layout.failed_path(1), {"shard": 1})
    run(tmp_path, FakePool(), n=2, previously_failed={1})
    assert not out.exists(layout.failed_path(1))


def test_no_commit_while_shards_run_stalls_the_job(tmp_path: Path) -> None:
    pool = FakePool(actors=2, hang=True)
    with pytest.raises(JobStalled, match=r"no shard finished while 4 were in flight on 2 render actor"):
        run(tmp_path, pool, n=6, stall_timeout=30)
    assert 30 <= pool.clock.now <= 32


def test_no_ready_actor_stalls_the_job_naming_what_it_waits_for(tmp_path: Path) -> None:
    pool = FakePool(actors=2, start_waits=10**9)
    with pytest.raises(JobStalled, match=r"no render actor ready; 0 of 2 \(--min-workers\).*2 fake actors starting"):
        run(tmp_path, pool, n=2, min_workers=2, stall_timeout=60)
    assert pool.submitted == []


def test_actors_that_never_start_are_a_job_error(tmp_path: Path) -> None:
    pool = FakePool(actors=1, start_waits=10**9, crash_cause="3 render actors in a row died while starting")
    pool.start = lambda: None  # nothing starting: the crash loop gave up
    with pytest.raises(JobError, match="workers: the render actors could not start"):
        run(tmp_path, pool, n=2)


def test_a_draining_actor_gets_no_new_shards(tmp_path: Path) -> None:
    pool = FakePool(actors=2, inflight=1, drain_after={0: 1})
    _, _, metrics = run(tmp_path, pool, n=6)
    assert [a for a, _ in pool.submitted].count(0) == 1
    assert sorted(committed(metrics)) == list(range(6))
