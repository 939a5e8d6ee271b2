"""``python -m turbobatch status OUT``: shards committed / failed / pending from the output alone."""

from __future__ import annotations

from turbobatch.jobs.inspect.status import main as status
from turbobatch.jobs.inspect.status import per_node, profile_line, summed_timings

SMALL = ["--model", "tiny-sd-turbo", "--height", "32", "--width", "32", "--shard-size", "4"]


def test_shards_and_images_per_node_and_markers_without_a_node():
    markers = [
        {"node_id": "a" * 56, "worker": "h1", "ok": 4},
        {"node_id": "b" * 56, "worker": "h1", "ok": 3},
        {"node_id": "a" * 56, "worker": "h1", "ok": 2},
        {"worker": "old-host", "ok": 1},
    ]
    assert per_node(markers) == [
        {"node_id": "a" * 56, "host": "h1", "shards": 2, "images": 6},
        {"node_id": "b" * 56, "host": "h1", "shards": 1, "images": 3},
        {"node_id": None, "host": "old-host", "shards": 1, "images": 1},
    ]


def test_device_shares_add_up_and_old_markers_without_timings_are_skipped():
    shard = {
        "read": 0.5,
        "device_wait": 3.0,
        "device_idle_before": 1.0,
        "render": 9.0,
        "pipeline": 6.0,
        "writer_wait": 2.0,
        "commit": 1.5,
        "total": 14.0,
    }
    t = summed_timings([{"timings_s": shard}] * 2)
    assert t["render"] == 18.0 and t["device_idle_before"] == 2.0
    assert profile_line(t) == (
        "pipeline calls 60.0%, idle between shards 10.0%, waiting for encodes 20.0%, render loop 10.0%"
    )
    older = {"read": 1.0, "render": 2.0, "pipeline": 1.0, "writer_wait": 0.0, "commit": 0.5, "total": 3.0}
    assert profile_line(summed_timings([{"timings_s": older}, {}])) is None


def test_status_of_a_folder_that_is_not_an_output(tmp_path, capsys):
    assert status([str(tmp_path)]) == 2
    assert "is not a turbobatch output" in capsys.readouterr().err
