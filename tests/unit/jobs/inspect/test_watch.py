"""``turbobatch status OUT --watch``: the rate / ETA maths, one read per marker, and a real job
followed from another process until it ends."""

from __future__ import annotations

import gzip
import io
import json
import signal
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import REPO, s3_options
from turbobatch.jobs.cli import main as turbobatch
from turbobatch.jobs.inspect.status import main as status
from turbobatch.jobs.inspect.watch import (
    Commit,
    OutputWatcher,
    eta_seconds,
    format_duration,
    images_per_second,
    watch_output,
)
from turbobatch.output import layout
from turbobatch.output.shard import Shard
from turbobatch.output.storage import Folder

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# -- rate and ETA over synthetic commits ----------------------------------------------------
def test_rate_counts_the_images_after_the_first_commit_of_the_window():
    commits = [Commit(at(0), 10, 0), Commit(at(10), 8, 2), Commit(at(20), 10, 0)]
    # 20 images (ok or error) committed over the 20 s between the first and last commit
    assert images_per_second(commits, now=at(25), window_s=300) == pytest.approx(1.0)
    # the window drops the old commits: only the last two, 10 images over 10 s
    assert images_per_second(commits, now=at(25), window_s=16) == pytest.approx(1.0)
    faster = [Commit(at(-1000), 10, 0), Commit(at(0), 10, 0), Commit(at(2), 10, 0), Commit(at(4), 10, 0)]
    assert images_per_second(faster, now=at(5), window_s=60) == pytest.approx(5.0)  # the old one is left out


def test_rate_needs_two_commits_apart_in_time_within_the_window():
    assert images_per_second([], now=at(0)) is None
    assert images_per_second([Commit(at(0), 10, 0)], now=at(1)) is None
    assert images_per_second([Commit(at(0), 10, 0), Commit(at(0), 10, 0)], now=at(1)) is None  # same instant
    old = [Commit(at(0), 10, 0), Commit(at(10), 10, 0)]
    assert images_per_second(old, now=at(10 + 301), window_s=300) is None  # nothing committed lately
    assert images_per_second([*old, Commit(None, 10, 0)], now=at(11)) == pytest.approx(1.0)  # no time: skipped


def test_eta_is_pending_images_over_the_rate():
    assert eta_seconds(100, 4.0) == 25.0
    assert eta_seconds(0, None) == 0.0 and eta_seconds(0, 0.0) == 0.0  # nothing left: done
    assert eta_seconds(100, None) is None  # no rate yet
    assert eta_seconds(100, 0.0) is None  # a zero rate has no ETA (not infinity, not a crash)
    assert [format_duration(s) for s in (0.4, 42, 185, 7620)] == ["0 s", "42 s", "3 min 05 s", "2 h 07 min"]


# -- a synthetic output folder ---------------------------------------------------------------
def make_output(out: Folder, shards: int, images: int = 4, model: str = "tiny-sd-turbo") -> None:
    plan = [
        Shard(i, "in.parquet", i * images, (i + 1) * images, i * images, 9, i * images, (i + 1) * images).to_dict()
        for i in range(shards)
    ]  # as make_plan writes them
    out.write_json(layout.PLAN, {"num_shards": shards, "shards": plan, "planned_at": T0.isoformat()})
    out.write_json(layout.SPEC, {"spec": {"model": model}, "fingerprint": {"inputs": []}})


def commit(out: Folder, shard_id: int, when: datetime, ok: int, error: int = 0) -> None:
    out.write_json(
        layout.done_path(shard_id),
        {
            "shard": shard_id,
            "rows": ok + error,
            "ok": ok,
            "error": error,
            "committed_at": when.isoformat(timespec="milliseconds"),
        },
    )


def fail(out: Folder, shard_id: int, error: str) -> None:
    out.write_json(layout.failed_path(shard_id), {"shard": shard_id, "error": error, "attempts": 4})


def count_reads(monkeypatch, out: Folder) -> tuple[list[str], list[str]]:
    """Every marker read and every folder listed through ``out``, in order."""
    reads: list[str] = []
    listings: list[str] = []
    read_many, list_versions = out.read_json_many, out.list_versions
    monkeypatch.setattr(out, "read_json_many", lambda rels: reads.extend(rels) or read_many(rels))
    monkeypatch.setattr(out, "list_versions", lambda rel, *a: listings.append(rel) or list_versions(rel, *a))
    return reads, listings


def test_a_refresh_lists_once_and_reads_only_markers_not_seen_before(tmp_path, monkeypatch):
    out = Folder(str(tmp_path / "out"))
    make_output(out, shards=4)
    commit(out, 0, at(0), 4)
    commit(out, 1, at(10), 3, 1)
    watcher = OutputWatcher(out)
    reads, listings = count_reads(monkeypatch, out)

    first = watcher.refresh(now=at(11))
    assert reads == [layout.done_path(0), layout.done_path(1)]
    assert listings == [layout.DONE_DIR, layout.FAILED_DIR]
    assert first.shards == {"total": 4, "committed": 2, "failed": 0, "pending": 2}
    assert first.images == {"total": 16, "ok": 7, "error": 1, "in_failed_shards": 0, "pending": 8}
    assert first.images_per_s == pytest.approx(0.4) and first.eta_s == pytest.approx(20.0)

    reads.clear(), listings.clear()
    commit(out, 2, at(20), 4)
    fail(out, 3, "OSError: the input file is corrupt")
    second = watcher.refresh(now=at(21))
    assert reads == [layout.done_path(2), layout.failed_path(3)]  # markers 0 and 1 are not read again
    assert listings == [layout.DONE_DIR, layout.FAILED_DIR]
    assert second.shards == {"total": 4, "committed": 3, "failed": 1, "pending": 0} and second.ended
    assert second.new_failures == [{"shard": 3, "error": "OSError: the input file is corrupt", "attempts": 4}]
    assert second.images["in_failed_shards"] == 4 and second.eta_s == 0.0

    reads.clear()
    (tmp_path / "out" / layout.done_path(0)).unlink()  # verify --repair dropped a broken shard's marker
    commit(out, 3, at(30), 4)  # a rerun committed the failed shard (its failed marker is left over)
    third = watcher.refresh(now=at(31))
    assert reads == [layout.done_path(3)]
    assert third.shards == {"total": 4, "committed": 3, "failed": 0, "pending": 1} and not third.ended
    assert third.images["ok"] == 3 + 4 + 4 and third.new_failures == []


def test_the_text_of_a_refresh_without_a_rate_and_with_a_failure(tmp_path):
    out = Folder(str(tmp_path / "out"))
    make_output(out, shards=3)
    commit(out, 0, datetime.now(UTC), 4)
    fail(out, 1, "RuntimeError: boom")
    text = io.StringIO()
    assert watch_output(out, interval_s=0.01, count=1, stream=text) == 0  # one pending shard: stopped by count
    lines = text.getvalue().splitlines()
    assert lines[0] == f"watching {out.display()} every 0.01 s (Ctrl-C to stop)"
    assert lines[1] == "plan: 3 shards, 12 images, model tiny-sd-turbo"
    assert lines[2].endswith(
        "  shards 1/3 committed, 1 failed, 1 pending; images 4/12 (4 ok, 0 error); — images/s (last 5 min); ETA —"
    )
    assert lines[3].endswith("  failed shard 1 (after 4 attempt(s)): RuntimeError: boom")
    assert len(lines) == 4


# -- the command: stops when the job ends, after --count, on Ctrl-C; waits; errors ----------
def test_watch_stops_when_the_job_has_ended_and_exits_1_with_failed_shards(tmp_path, capsys):
    out = Folder(str(tmp_path / "out"))
    make_output(out, shards=2)
    commit(out, 0, at(0), 4)
    commit(out, 1, at(10), 4)
    assert turbobatch(["status", out.url, "--watch", "0.01"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[-1] == "job ended: all 2 shards committed, 8 images ok, 0 error rows"

    (tmp_path / "out" / layout.done_path(1)).unlink()
    fail(out, 1, "OSError: corrupt")
    assert status([out.url, "--watch", "0.01", "--json"]) == 1
    [line] = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert line["state"] == "ended" and line["shards"] == {"total": 2, "committed": 1, "failed": 1, "pending": 0}
    assert line["new_failed"] == [{"shard": 1, "error": "OSError: corrupt", "attempts": 4}]


def test_count_stops_a_watch_of_an_unfinished_job_after_that_many_refreshes(tmp_path, capsys):
    out = Folder(str(tmp_path / "out"))
    make_output(out, shards=2)
    commit(out, 0, at(0), 4)  # shard 1 never commits: only --count ends the watch
    assert status([out.url, "--watch", "0.01", "--count", "2", "--json"]) == 0
    lines = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert [line["state"] for line in lines] == ["running", "running"]
    assert [line["shards"]["committed"] for line in lines] == [1, 1]


def test_a_missing_output_is_waited_for(tmp_path, capsys):
    assert status([str(tmp_path / "not-yet"), "--watch", "0.01", "--count", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3  # the watch's first line, then one per refresh
    waiting = f"  waiting for the job: no {tmp_path}/not-yet/_job/spec.json yet (the job has not planned)"
    assert lines[1].endswith(waiting) and lines[2].endswith(waiting)


def test_watch_flags_are_checked(tmp_path, capsys):
    for argv in (["--watch", "0"], ["--watch", "-1"], ["--count", "2"], ["--watch", "1", "--count", "0"]):
        with pytest.raises(SystemExit) as e:
            status([str(tmp_path), *argv])
        assert e.value.code == 2
    assert "--count: expected a number of refreshes of 1 or more, with --watch" in capsys.readouterr().err


def test_ctrl_c_ends_a_watch_quietly_with_130(tmp_path):
    watch = subprocess.Popen(
        [sys.executable, "-m", "turbobatch", "status", str(tmp_path / "not-yet"), "--watch", "0.1"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "waiting for the job" in watch.stdout.readline() + watch.stdout.readline()
        watch.send_signal(signal.SIGINT)
        _, err = watch.communicate(timeout=30)
    finally:
        watch.kill()
    assert watch.returncode == 130 and err == ""


def test_watch_over_s3_and_unreadable_buckets_and_endpoints(s3_endpoint, s3_bucket, capsys):
    options = s3_options(s3_endpoint)
    out = Folder(f"s3://{s3_bucket}/out", options)
    flags = ["--storage-options", json.dumps(options), "--watch", "0.01", "--json"]
    assert status([out.url, *flags, "--count", "1"]) == 0  # a bucket without the output yet: waited for
    assert json.loads(capsys.readouterr().out)["state"] == "waiting"

    make_output(out, shards=2)
    now = datetime.now(UTC)
    commit(out, 0, now - timedelta(seconds=3), 4)
    commit(out, 1, now - timedelta(seconds=1), 4)  # within the last 5 minutes: a rate
    assert status([out.url, *flags]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["state"] == "ended" and line["images"]["ok"] == 8 and line["images_per_s"] == 2.0

    assert status([f"s3://{s3_bucket}-missing/out", *flags]) == 2
    assert f"error: output: bucket '{s3_bucket}-missing' does not exist" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    unreachable = ["--storage-options", json.dumps(s3_options(closed)), "--watch", "0.01"]
    assert status([out.url, *unreachable]) == 2
    err = capsys.readouterr().err
    assert f"error: output: cannot read {out.url}: endpoint unreachable" in err and closed in err


# -- end to end: a real job in another process ----------------------------------------------


def test_complete_blocks_count_every_planned_shard_of_a_block():
    from turbobatch.jobs.inspect.watch import complete_blocks

    assert complete_blocks(range(2500), 3500) == {0, 1}
    assert complete_blocks([*range(3000), *range(3000, 3500)], 3500) == {0, 1, 2, 3}  # the last block: 500 ids
    assert complete_blocks([i for i in range(3500) if i != 1999], 3500) == {0, 2, 3}
    assert complete_blocks([5000], 3500) == set()  # not in the plan


def test_a_refresh_lists_only_blocks_not_yet_complete_and_those_repair_named(s3_endpoint, s3_bucket):
    """On S3: after the first refresh, the complete blocks of _done/ are not listed again, unless `verify --repair`
    named one of their shards in spec.json (it does so before removing the marker)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    from tests.faultproxy import FaultProxy
    from turbobatch.jobs.prepare import resume
    from turbobatch.jobs.prepare.inputs import InputFile
    from turbobatch.jobs.prepare.plan import fingerprint, make_plan
    from turbobatch.spec.job import JobSpec

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]

    def commit(ids):
        for i in ids:
            backend.put_object(s3_bucket, f"out/{layout.done_path(i)}", b'{"shard": %d, "ok": 1, "error": 0}' % i)

    with FaultProxy(int(s3_endpoint.rsplit(":", 1)[1])) as proxy:
        out = Folder(f"s3://{s3_bucket}/out", s3_options(proxy.url))
        inputs = [InputFile("s3://in/a.parquet", 10, 3_500_000, {"prompt": "string"})]
        spec = JobSpec(input="s3://in/", output=out.url, shard_size=1000)
        plan = make_plan(inputs, spec.shard_size)
        resume.prepare(out, spec, plan, fingerprint(inputs, spec))
        commit(range(2500))
        # their summaries, as a status writes them (the first refresh then reads no marker)
        blocks: dict[int, dict[str, list]] = {}
        for i, version in resume.done_versions(out, len(plan)).items():
            blocks.setdefault(i // 1000, {})[str(i)] = [version, {"shard": i, "ok": 1, "error": 0}]
        out.write_many(
            {
                layout.summary_path(b): gzip.compress(json.dumps({"format": 1, "shards": shards}).encode())
                for b, shards in blocks.items()
            }
        )
        watcher = OutputWatcher(out)
        first = watcher.refresh()
        assert first.shards["committed"] == 2500
        commit(range(2500, 3100))
        proxy.requests.clear()
        second = watcher.refresh()
        assert second.shards["committed"] == 3100 and second.images["ok"] == 3100
        lists = proxy.requests["LIST"]  # blocks 2 and 3 (not complete at the first refresh), after the plan, _failed/
        proxy.requests.clear()
        watcher.refresh()
        assert proxy.requests["LIST"] == lists - 1  # block 2 is complete now: only block 3 of _done/ is listed
        proxy.requests.clear()
        every = resume.done_listing(out, len(plan), trust_summaries=False)
        assert proxy.requests["LIST"] == 4 + 1 and len(every.versions) == 3100  # what the refresh spared
        resume.record_removed_markers(out, [1500])
        out.remove_file(layout.done_path(1500))
        third = watcher.refresh()
        assert third.shards["committed"] == 3099 and third.images["ok"] == 3099
