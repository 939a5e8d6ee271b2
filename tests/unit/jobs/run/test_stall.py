"""The stall rule (jobs/run/stall.py), on a hand-driven clock."""

from turbobatch.jobs.run.stall import NO_ACTOR, NO_COMMIT, StallWatch


def test_no_ready_actor_for_the_timeout_stalls():
    watch = StallWatch(timeout_s=10)
    assert watch.check(0.0, can_render=False, in_flight=0) is None
    assert watch.check(9.9, can_render=False, in_flight=0) is None
    assert watch.check(10.0, can_render=False, in_flight=0) == (NO_ACTOR, 10.0)


def test_an_actor_ready_in_between_restarts_the_clock():
    watch = StallWatch(timeout_s=10)
    watch.check(0.0, can_render=False, in_flight=0)
    watch.check(8.0, can_render=True, in_flight=0)  # an actor came, then left
    assert watch.check(12.0, can_render=False, in_flight=0) is None
    assert watch.check(22.0, can_render=False, in_flight=0) == (NO_ACTOR, 10.0)


def test_shards_in_flight_without_a_finish_stall_and_a_finish_resets():
    watch = StallWatch(timeout_s=10)
    assert watch.check(0.0, can_render=True, in_flight=2) is None
    watch.shard_finished(9.0)
    assert watch.check(18.0, can_render=True, in_flight=2) is None
    assert watch.check(19.0, can_render=True, in_flight=2) == (NO_COMMIT, 10.0)


def test_nothing_in_flight_is_not_a_commit_stall():
    watch = StallWatch(timeout_s=10)
    watch.check(0.0, can_render=True, in_flight=1)
    assert watch.check(5.0, can_render=True, in_flight=0) is None  # it finished (or was requeued)
    assert watch.check(100.0, can_render=True, in_flight=0) is None
    assert watch.check(101.0, can_render=True, in_flight=1) is None  # a new clock from here
    assert watch.check(111.0, can_render=True, in_flight=1) == (NO_COMMIT, 10.0)
