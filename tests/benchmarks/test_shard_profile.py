"""benchmarks/shard_profile.py: shares of shard time from done markers."""

from benchmarks.shard_profile import profile_line, summed


def test_shares_add_up_to_the_shard_time():
    markers = [{"timings_s": {"read": 0.5, "render": 8.0, "pipeline": 6.0, "writer_wait": 1.0, "commit": 1.5,
                              "total": 10.0}}] * 2  # fmt: skip
    t = summed(markers)
    assert t["total"] == 20.0 and t["pipeline"] == 12.0
    assert profile_line(t) == ("pipeline calls 60.0%, reading rows 5.0%, waiting for encodes 10.0%, "
                               "loop (keys, records, queueing) 10.0%, commit (last encodes, tar, metadata, marker) 15.0%")
