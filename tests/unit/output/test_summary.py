"""Summaries of done markers (output/summary.py): status, the card and the watch read each marker once, and
get what reading every marker gives, after redone and removed shards, stale or torn summaries, and on an
output they cannot write."""

from __future__ import annotations

import gzip
import json

from tests.conftest import s3_options
from tests.faultproxy import FaultProxy
from turbobatch.jobs.inspect.status import job_status
from turbobatch.jobs.inspect.watch import OutputWatcher
from turbobatch.jobs.prepare import resume
from turbobatch.output import layout, summary
from turbobatch.output.shard import Shard
from turbobatch.output.storage import Folder

SHARDS = 2500  # three summary blocks: 0-999, 1000-1999, 2000-2499
COMMITTED = [0, 5, 998, 999, 1000, 1001, 1500, 2000, 2499]


def make_output(out: Folder) -> None:
    plan = [Shard(i, "in.parquet", i * 4, (i + 1) * 4, i * 4, 9, i * 4, (i + 1) * 4).to_dict() for i in range(SHARDS)]
    out.write_json(layout.PLAN, {"num_shards": SHARDS, "shards": plan, "planned_at": "2026-01-02T03:04:05+00:00"})
    out.write_json(layout.SPEC, {"spec": {"model": "tiny-sd-turbo"}, "fingerprint": {"inputs": []}})


def marker(shard_id: int, ok: int = 3) -> dict:
    """A done marker as workers write it: files with checksums, timings, node, start-up in some."""
    node = shard_id % 3
    m = {
        "shard": shard_id,
        "rows": 4,
        "ok": ok,
        "error": 4 - ok,
        "image_bytes": 1000 + shard_id,
        "files": {
            layout.tar_path(shard_id): {"bytes": 5000 + shard_id, "sha256": "ab" * 32},
            layout.metadata_path(shard_id): {"bytes": 700, "sha256": "cd" * 32},
        },
        "spec_hash": "ef" * 32,
        "pid": 4242,
        "worker": f"host{node}",
        "node_id": f"{node:056x}",
        "device_kind": "cpu" if node else "NVIDIA H200",
        "timings_s": {
            "read": 0.1 + shard_id / 7,
            "device_idle_before": 0.3,
            "render": 2.0 + shard_id / 3,
            "pipeline": 1.5,
            "writer_wait": 0.25,
            "commit": 0.5,
            "total": 3.0 + shard_id / 11,
        },
        "committed_at": f"2026-01-02T03:{shard_id % 60:02d}:00.000+00:00",
    }
    if shard_id in (0, 1000):
        m["startup_s"] = {"fetch": 1.0 + shard_id, "load": 2.0, "first_batch": 0.5}
        m["model_fetch"] = [{"component": "model", "action": "copied", "bytes": 10, "seconds": 1.0, "waited_s": 0}]
    return m


def commit(out: Folder, *ids: int, ok: int = 3) -> None:
    for i in ids:
        out.write_json(layout.done_path(i), marker(i, ok))


def count_reads(monkeypatch, out: Folder) -> list[str]:
    """Every marker read through ``out`` (summaries are read by read_bytes_many)."""
    reads: list[str] = []
    read_many = out.read_json_many
    monkeypatch.setattr(out, "read_json_many", lambda rels: reads.extend(rels) or read_many(rels))
    return reads


def status_reading_every_marker(out: Folder) -> dict:
    """What status says with no summary at all (removed first, and not kept)."""
    out.remove_tree(layout.SUMMARY_DIR)
    status = job_status(out)
    out.remove_tree(layout.SUMMARY_DIR)
    return status


def test_status_from_summaries_equals_status_from_every_marker_and_reads_each_marker_once(tmp_path, monkeypatch):
    out = Folder(str(tmp_path / "out"))
    make_output(out)
    commit(out, *COMMITTED)
    reads = count_reads(monkeypatch, out)
    first = job_status(out)  # no summary yet: reads every marker, writes the three summaries
    assert sorted(reads) == [layout.done_path(i) for i in COMMITTED]
    assert sorted(p.name for p in (tmp_path / "out" / layout.SUMMARY_DIR).iterdir()) == [
        "000000.json.gz",
        "000001.json.gz",
        "000002.json.gz",
    ]
    reads.clear()
    again = job_status(out)
    assert reads == [] and again == first
    assert first["images"]["ok"] == 3 * len(COMMITTED) and first["startup"]["actors"] == 2
    assert first["timings_s"]["read"] == sum(marker(i)["timings_s"]["read"] for i in COMMITTED)  # the same sum order
    assert status_reading_every_marker(out) == first


def test_a_redone_marker_is_read_again_and_a_removed_one_is_dropped(tmp_path, monkeypatch):
    out = Folder(str(tmp_path / "out"))
    make_output(out)
    commit(out, *COMMITTED)
    job_status(out)
    reads = count_reads(monkeypatch, out)
    commit(out, 999, ok=4)  # the shard was redone: its marker rewritten at once, same size
    (tmp_path / "out" / layout.done_path(1500)).unlink()  # verify --repair removed a broken shard's marker
    redone = job_status(out)
    assert reads == [layout.done_path(999)]
    assert redone["shards"]["committed"] == len(COMMITTED) - 1
    assert redone["images"]["ok"] == 3 * (len(COMMITTED) - 1) + 1
    kept = json.loads(gzip.decompress((tmp_path / "out" / layout.summary_path(1)).read_bytes()))
    assert sorted(kept["shards"]) == ["1000", "1001"]  # 1500 dropped from its block's summary
    reads.clear()
    assert job_status(out) == redone and reads == []
    assert status_reading_every_marker(out) == redone


def test_a_stale_or_torn_summary_costs_reads_never_a_wrong_answer(tmp_path, monkeypatch):
    out = Folder(str(tmp_path / "out"))
    make_output(out)
    commit(out, *COMMITTED)
    truth = job_status(out)
    # An entry naming another version (as if written by a reader that listed before a shard was redone,
    # racing this one), with counts that are wrong now; and a summary cut short.
    path = tmp_path / "out" / layout.summary_path(0)
    held = json.loads(gzip.decompress(path.read_bytes()))
    held["shards"]["5"] = ["an-older-version", {**marker(5), "ok": 99}]
    path.write_bytes(gzip.compress(json.dumps(held).encode()))
    torn = tmp_path / "out" / layout.summary_path(2)
    torn.write_bytes(torn.read_bytes()[:20])
    reads = count_reads(monkeypatch, out)
    assert job_status(out) == truth
    assert reads == [layout.done_path(i) for i in (5, 2000, 2499)]
    reads.clear()
    assert job_status(out) == truth and reads == []  # both summaries rewritten


def test_a_read_only_output_on_s3_still_gets_a_correct_status(s3_endpoint, s3_bucket):
    """A credential that may read but not write: no summary is written, every marker is read each time."""
    upstream_port = int(s3_endpoint.rsplit(":", 1)[1])
    writer = Folder(f"s3://{s3_bucket}/out", s3_options(s3_endpoint))
    make_output(writer)
    commit(writer, *COMMITTED)
    with FaultProxy(upstream_port) as proxy:
        proxy.forbid("PUT")
        reader = Folder(f"s3://{s3_bucket}/out", s3_options(proxy.url))
        first = job_status(reader)
        second = job_status(reader)
    assert proxy.faults["forbidden"] >= 3  # the three summaries were tried
    assert not writer.list_versions(layout.SUMMARY_DIR)
    assert first == second
    assert len([p for p in proxy.gets_of("/_done/")]) == len(COMMITTED)
    assert sum(proxy.gets_of("/_done/").values()) == 2 * len(COMMITTED)
    assert status_reading_every_marker(writer) == first


def test_the_first_watch_refresh_takes_committed_markers_from_the_summaries(tmp_path, monkeypatch):
    out = Folder(str(tmp_path / "out"))
    make_output(out)
    many = list(range(1000, 1000 + summary_watch_threshold()))
    commit(out, *COMMITTED, *many)
    job_status(out)  # writes the summaries
    commit(out, 1999)  # committed since
    reads = count_reads(monkeypatch, out)
    snapshot = OutputWatcher(out).refresh()
    assert snapshot.shards["committed"] == len(set(COMMITTED + many)) + 1
    # Block 1 (>= 10 new markers to the watch) comes from its summary, except the marker committed since, and its
    # summary is rewritten with it; blocks 0 and 2 (few) are read marker by marker.
    assert reads == [layout.done_path(i) for i in (0, 5, 998, 999, 1999, 2000, 2499)]
    assert snapshot.images["ok"] == 3 * snapshot.shards["committed"]
    held = json.loads(gzip.decompress((tmp_path / "out" / layout.summary_path(1)).read_bytes()))
    assert "1999" in held["shards"]


def summary_watch_threshold() -> int:
    from turbobatch.jobs.inspect.watch import SUMMARY_FROM

    return SUMMARY_FROM


def test_the_card_reads_through_the_summaries(tmp_path, monkeypatch):
    from turbobatch.jobs.card import write_card
    from turbobatch.spec.resolved import ResolvedJob

    out = Folder(str(tmp_path / "out"))
    make_output(out)
    commit(out, *COMMITTED)
    spec = ResolvedJob(input="in.parquet", output=out.url, model="tiny-sd-turbo", shard_size=4)
    reads = count_reads(monkeypatch, out)
    text = write_card(out, spec)
    assert sorted(reads) == [layout.done_path(i) for i in COMMITTED]
    reads.clear()
    assert write_card(out, spec).split("card written")[0] == text.split("card written")[0] and reads == []
    assert f"num_examples: {3 * len(COMMITTED)}" in text and f"num_bytes: {sum(5000 + i for i in COMMITTED)}" in text


def test_summaries_keep_what_readers_use_and_drop_checksums():
    m = marker(1000)
    kept = summary.summarize(m)
    assert kept["files"] == {layout.tar_path(1000): {"bytes": 6000}, layout.metadata_path(1000): {"bytes": 700}}
    assert "spec_hash" not in kept and "pid" not in kept
    assert {k: v for k, v in kept.items() if k != "files"} == {
        k: v for k, v in m.items() if k not in ("files", "spec_hash", "pid")
    }
    assert resume.listing_prefixes(None) == ([], None)


def test_without_a_version_from_the_listing_a_marker_is_always_read(tmp_path, monkeypatch):
    """A store whose listing has no ETag, generation or mtime: a rewritten marker cannot be told from the old one."""
    from turbobatch.output.storage import version_of

    assert version_of({"size": 3}) is None and version_of({"size": 3, "ETag": '"ab"'}) == "3:ab"
    out = Folder(str(tmp_path / "out"))
    commit(out, 7)
    reads = count_reads(monkeypatch, out)
    assert (
        summary.done_markers(out, {7: None}) == summary.done_markers(out, {7: None}) == [summary.summarize(marker(7))]
    )
    assert reads == [layout.done_path(7)] * 2
