"""The real-Ray half of tests/unit/jobs/inspect/test_status.py: what only a running cluster shows."""

from __future__ import annotations

import json
import re

from tests.conftest import write_parquet
from tests.helpers import corrupt_parquet
from tests.unit.jobs.inspect.test_status import SMALL
from turbobatch.jobs.cli import main as turbobatch
from turbobatch.jobs.cli import render_main as render
from turbobatch.jobs.inspect.status import main as status


def test_status_counts_committed_failed_and_pending(ray_cluster, tmp_path, capsys):
    data = tmp_path / "data"
    write_parquet(data / "a.parquet", {"prompt": ["one", None, "three", "four", "five", "six", "seven", "eight"]})
    corrupt_parquet(data / "b.parquet", [f"corrupted {i}" for i in range(4)])
    out = tmp_path / "out"
    assert render([str(data), str(out), *SMALL]) == 1
    (out / "_done" / "000001.json").unlink()  # as if the run died before committing shard 1
    capsys.readouterr()

    assert status([str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shards"] == {"total": 3, "committed": 1, "failed": 1, "pending": 1}
    assert report["images"] == {"total": 12, "ok": 3, "error": 1, "in_failed_shards": 4, "pending": 4}
    assert "rows" not in report and report["input_rows"] == 12 and report["image_bytes"] > 0
    assert report["model"] == "tiny-sd-turbo" and report["planned_at"].endswith("+00:00")
    assert [f["shard"] for f in report["failed"]] == [2]
    assert report["failed"][0]["error"].startswith("OSError") and report["failed"][0]["attempts"] == 1

    assert turbobatch(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "shards:  1 committed, 1 failed, 1 pending" in text
    assert "images:  3 ok, 1 error (committed); 4 in failed shards, 4 pending; " in text
    assert "failed shard 2 (after 1 attempt(s)): OSError" in text
    assert "run the render command again" in text
    assert re.search(
        r"^device:  pipeline calls [\d.]+%, idle between shards [\d.]+%, waiting for encodes [\d.]+%, "
        r"render loop [\d.]+% \(of [\d,]+ device-seconds in committed shards\)$",
        text,
        re.MULTILINE,
    ), text
    assert {"pipeline", "device_idle_before", "device_wait", "commit", "total"} <= set(report["timings_s"])
    [node] = report["nodes"]  # one node rendered the committed shard: the local Ray's
    assert re.fullmatch(r"[0-9a-f]{56}", node["node_id"]) and (node["shards"], node["images"]) == (1, 3)
    assert f"node:    node {node['node_id'][:12]} ({node['host']}): 1 shards, 3 images" in text
