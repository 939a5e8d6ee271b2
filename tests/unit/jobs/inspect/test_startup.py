"""Start-up over actors, from their first done markers."""

from turbobatch.jobs.inspect.startup import startup_line, startup_report


def first_marker(fetch, load, first_batch, *actions, size=2**20, kind="NVIDIA H200"):
    return {
        "startup_s": {"fetch": fetch, "load": load, "first_batch": first_batch},
        "device_kind": kind,
        "model_fetch": [{"component": "model", "action": a, "bytes": size} for a in actions],
    }


def test_min_median_max_over_actors_and_copies_against_cache_hits():
    markers = [
        first_marker(30.0, 4.0, 1.0, "copied"),
        {"ok": 3},
        first_marker(31.0, 5.0, None, "cached"),
        first_marker(0.5, 3.0, 2.0, "cached", "in_place", kind="cpu"),
    ]
    report = startup_report(markers)
    assert report == {
        "actors": 3,
        "fetch_s": {"min": 0.5, "median": 30.0, "max": 31.0},
        "load_s": {"min": 3.0, "median": 4.0, "max": 5.0},
        "first_batch_s": {"min": 1.0, "median": 1.5, "max": 2.0},
        "copies": 1,
        "cache_hits": 2,
        "in_place": 1,
        "copied_bytes": 2**20,
        "device_kinds": {"NVIDIA H200": 2, "cpu": 1},
    }
    assert startup_line(report) == (
        "start-up: 3 actors, min / median / max: fetch 0.5 / 30.0 / 31.0 s, load 3.0 / 4.0 / 5.0 s, first batch "
        "1.0 / 1.5 / 2.0 s; model folders: 1 copied (1.0 MiB), 2 from the node's cache, 1 loaded in place"
    )


def test_markers_written_before_start_up_was_recorded_say_nothing():
    assert startup_report([{"ok": 3, "timings_s": {}}]) is None and startup_line(None) is None
