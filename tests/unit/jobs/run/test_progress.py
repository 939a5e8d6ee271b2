"""The end-of-run summary: two rates, each saying whose it is (the job's over wall time, one worker's over device time)."""

from __future__ import annotations

from turbobatch.jobs.run import progress as progress_module
from turbobatch.jobs.run.progress import Progress, ShardOutcome


def marker(shard: int, ok: int, render_s: float) -> dict:
    return {
        "shard": shard,
        "rows": ok + 1,
        "ok": ok,
        "error": 1,
        "device_kind": "cpu",
        "timings_s": {"render": render_s, "device_idle_before": 0.0},
    }


def test_the_summary_names_the_job_rate_and_the_per_worker_rate(monkeypatch):
    progress = Progress(total_shards=3, already_done=1, pending_images=22, started=100.0)
    progress.record(ShardOutcome(1, 11, marker=marker(1, 10, 1.0)))
    progress.record(ShardOutcome(2, 11, marker=marker(2, 10, 1.0)))
    progress.close()
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: 140.0)  # 40 s of wall time
    lines = progress.summary("/out").splitlines()
    assert "speed: 0.50 images/s for the job (20 ok images this run / 40.0 s wall time)" in lines
    assert "devices: cpu: 2 shards, 20 images, 10.00 images/s per worker while rendering (device time)" in lines
    assert sum("images/s" in line for line in lines) == 2


def test_progress_keeps_counts_not_markers_and_redraws_by_time(monkeypatch):
    """A driver of 100,000 shards: no marker kept per committed shard (only each actor's first, with
    its start-up), and no redraw per shard (benchmarks/driver_scale.py)."""
    redraws = []
    progress = Progress(total_shards=1000, already_done=0, pending_images=11_000)
    monkeypatch.setattr(progress.bar, "set_postfix_str", lambda text, **kw: redraws.append(text))
    for shard in range(1000):
        first = {"startup_s": {"load": 1.0}} if shard < 3 else {}
        progress.record(ShardOutcome(shard, 11, marker={**marker(shard, 10, 1.0), **first}))
    assert progress.committed == 1000 and progress.ok == 10_000 and progress.errors == 1000
    assert len(progress.startup_markers) == 3 and not hasattr(progress, "outcomes")
    assert len(redraws) <= 2, redraws[:5]
    progress.close()
    assert redraws[-1].startswith("shards 1000/1000")


def test_a_worker_change_is_drawn_at_once(monkeypatch):
    """Actors joining are rare and what a user waits for: drawn at once, unlike per-shard redraws."""
    redraws = []
    progress = Progress(total_shards=10, already_done=0, pending_images=110)
    monkeypatch.setattr(progress.bar, "set_postfix_str", lambda text, **kw: redraws.append(text))
    progress.set_workers(1, 2)
    progress.set_workers(1, 2)
    progress.set_workers(2, 1)
    assert redraws == ["shards 0/10, workers 1 ready / 2 starting", "shards 0/10, workers 2 ready / 1 starting"]
    progress.close()
