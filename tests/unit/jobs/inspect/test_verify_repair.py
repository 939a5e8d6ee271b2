"""verify --repair names the shards whose done markers it removes in spec.json first (resume.done_listing then
never takes their blocks from a summary)."""

from __future__ import annotations

from turbobatch.jobs.inspect import verify
from turbobatch.jobs.prepare import resume
from turbobatch.output import layout
from turbobatch.output.storage import Folder


def test_repair_records_the_removed_markers_before_removing_them(tmp_path, monkeypatch):
    out = Folder(str(tmp_path))
    out.write_json(layout.SPEC, {"spec": {"format": "tar"}, "fingerprint": {"x": 1}})
    for i in (3, 4):
        out.write_json(layout.done_path(i), {"shard": i})
    seen: list[set[int] | None] = []
    real = Folder.remove_file

    def remove_file(self, rel):
        if rel.startswith(f"{layout.DONE_DIR}/"):
            seen.append(resume.removed_markers(self))
        real(self, rel)

    monkeypatch.setattr(Folder, "remove_file", remove_file)
    report = verify.Report(out.display(), "tar", 5, 2, [verify.ShardCheck(3, ["bad"], [])], [])
    verify.repair(out, report)
    assert seen == [{3}]
    assert not out.exists(layout.done_path(3)) and out.exists(layout.done_path(4))
    assert out.read_json(layout.SPEC)["fingerprint"] == {"x": 1}


def test_a_shard_a_summary_names_without_a_marker_is_broken_and_repair_records_it(s3_endpoint, s3_bucket):
    """On S3 readers take a complete block from its summary: a marker removed by hand would stay counted as
    committed and never be redone. verify finds it; --repair names it in spec.json, so its block is listed."""
    import gzip
    import json

    from tests.conftest import s3_options

    out = Folder(f"s3://{s3_bucket}/out", s3_options(s3_endpoint))
    out.write_json(layout.SPEC, {"spec": {"format": "tar"}, "fingerprint": {}})
    out.write_json(layout.PLAN, {"shards": [{"shard_id": i} for i in range(3)]})
    shards = {str(i): ["1:x", {"shard": i, "ok": 0, "error": 0, "rows": 0, "files": {}}] for i in range(3)}
    out.write_bytes(layout.summary_path(0), gzip.compress(json.dumps({"format": 1, "shards": shards}).encode()))
    for i in (0, 2):  # shard 1's marker removed by hand
        out.write_json(layout.done_path(i), {"shard": i, "rows": 0, "ok": 0, "error": 0, "files": {}})
    assert verify.summarized_without_marker(out, 3, {0, 2}) == [1]
    report = verify.verify(out)  # (these bare markers are broken too: their format's objects are missing)
    assert {c.shard: c.problems for c in report.broken}[1] == [verify.UNMARKED] and not report.ok
    report.broken = [c for c in report.broken if c.shard == 1]
    verify.repair(out, report)
    assert resume.removed_markers(out) == {1}
    assert verify.summarized_without_marker(out, 3, {0, 2}) == []  # recorded: its block is listed now
    assert resume.committed_shards(out, 3) == {0, 2}
