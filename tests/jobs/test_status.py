"""``python -m turbobatch status OUT``: shards committed / failed / pending from the output alone."""

from __future__ import annotations

import json
import re

from turbobatch.jobs.cli import main as turbobatch
from turbobatch.jobs.cli import render_main as render
from turbobatch.jobs.inspect.status import main as status
from turbobatch.jobs.inspect.status import per_node, profile_line, summed_timings
from tests.conftest import write_parquet
from tests.helpers import corrupt_parquet

SMALL = ["--model", "tiny-sd-turbo", "--height", "32", "--width", "32", "--shard-size", "4"]


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
    assert re.search(r"^device:  pipeline calls [\d.]+%, idle between shards [\d.]+%, waiting for encodes [\d.]+%, "
                     r"render loop [\d.]+% \(of [\d,]+ device-seconds in committed shards\)$", text, re.MULTILINE), text
    assert {"pipeline", "device_idle_before", "device_wait", "commit", "total"} <= set(report["timings_s"])
    [node] = report["nodes"]  # one node rendered the committed shard: the local Ray's
    assert re.fullmatch(r"[0-9a-f]{56}", node["node_id"]) and (node["shards"], node["images"]) == (1, 3)
    assert f"node:    node {node['node_id'][:12]} ({node['host']}): 1 shards, 3 images" in text


def test_shards_and_images_per_node_and_markers_without_a_node():
    markers = [{"node_id": "a" * 56, "worker": "h1", "ok": 4}, {"node_id": "b" * 56, "worker": "h1", "ok": 3},
               {"node_id": "a" * 56, "worker": "h1", "ok": 2}, {"worker": "old-host", "ok": 1}]  # fmt: skip
    assert per_node(markers) == [
        {"node_id": "a" * 56, "host": "h1", "shards": 2, "images": 6},
        {"node_id": "b" * 56, "host": "h1", "shards": 1, "images": 3},
        {"node_id": None, "host": "old-host", "shards": 1, "images": 1},
    ]


def test_device_shares_add_up_and_old_markers_without_timings_are_skipped():
    shard = {"read": 0.5, "device_wait": 3.0, "device_idle_before": 1.0, "render": 9.0, "pipeline": 6.0,
             "writer_wait": 2.0, "commit": 1.5, "total": 14.0}  # fmt: skip
    t = summed_timings([{"timings_s": shard}] * 2)
    assert t["render"] == 18.0 and t["device_idle_before"] == 2.0
    assert profile_line(t) == ("pipeline calls 60.0%, idle between shards 10.0%, waiting for encodes 20.0%, "
                               "render loop 10.0%")
    older = {"read": 1.0, "render": 2.0, "pipeline": 1.0, "writer_wait": 0.0, "commit": 0.5, "total": 3.0}
    assert profile_line(summed_timings([{"timings_s": older}, {}])) is None


def test_status_of_a_folder_that_is_not_an_output(tmp_path, capsys):
    assert status([str(tmp_path)]) == 2
    assert "is not a turbobatch output" in capsys.readouterr().err
