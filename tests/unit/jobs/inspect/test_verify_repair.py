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
