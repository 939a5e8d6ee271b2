"""jobs/run/pool.py's bookkeeping without Ray: its Ray calls (``_new_actor``, ``_get``, ``_kill``,
``_draining_nodes``, ``_loss_cause``) answered in process. The real-cluster behaviour is in test_pool.py."""

from __future__ import annotations

import random
import time
from typing import Any

from turbobatch.jobs.run import nodes
from turbobatch.jobs.run.pool import DRAIN_MARGIN_S, ActorPool, Worker
from turbobatch.spec.job import JobSpec


class ActorId(bytes):
    def hex(self) -> str:  # type: ignore[override]
        return bytes.hex(self)


class Handle:
    def __init__(self, index: int) -> None:
        self._actor_id = ActorId(index.to_bytes(4, "big"))
        self.node = f"node-{index % 3}"
        self.ready = type("M", (), {"remote": staticmethod(lambda: f"ready-{index}")})()
        self.render_shard = type("M", (), {"remote": staticmethod(lambda shard: ("task", index, shard))})()


class InProcessPool(ActorPool):
    def __init__(self, target: int, inflight: int = 2) -> None:
        super().__init__(JobSpec(input="i", output="o"), target, lambda message: None, inflight=inflight)
        self.cls, self.made, self.draining, self.killed = object(), 0, {}, []

    def _new_actor(self) -> Any:
        self.made += 1
        return Handle(self.made)

    def _get(self, ref: Any) -> Any:
        return {"node_id": f"node-{int(ref.split('-')[1]) % 3}", "host": "h"}

    def _kill(self, actor: Any) -> None:
        self.killed.append(actor)

    def _draining_nodes(self) -> dict[str, float | None]:
        return self.draining

    def _loss_cause(self, error: BaseException, actor_hex: str, worker: Any) -> str:
        return nodes.DIED

    def join_all(self) -> None:
        for ref in list(self.starting):
            self.on_started(ref)

    def check(self) -> None:
        """The O(1) state (free buckets, usable count) agrees with a scan of every worker."""
        assert self.usable_count == sum(not w.draining for w in self.workers.values())
        for busy, bucket in enumerate(self.free):
            expect = {a for a, w in self.workers.items() if not w.draining and w.busy == busy}
            assert set(bucket) == expect, (busy, set(bucket), expect)


def test_submit_picks_the_least_busy_actor_and_respects_inflight() -> None:
    pool = InProcessPool(3, inflight=2)
    pool.start()
    pool.join_all()
    sent = [pool.submit(i) for i in range(7)]
    assert sent[6] is None and all(s is not None for s in sent[:6])
    assert sorted(actor for actor, _ in sent[:3]) == sorted(pool.workers)  # each actor once before any twice
    assert all(w.busy == 2 for w in pool.workers.values())
    pool.check()


def test_random_joins_submits_finishes_losses_and_drains_keep_the_state_consistent() -> None:
    rng = random.Random(7)
    pool = InProcessPool(12, inflight=3)
    pool.start()
    pool.join_all()
    running: list[Any] = []
    for step in range(3000):
        op = rng.random()
        if op < 0.45:
            sent = pool.submit(step)
            if sent:
                running.append(sent[0])
        elif op < 0.85 and running:
            pool.finished(running.pop(rng.randrange(len(running))))
        elif op < 0.9 and running:
            actor = running[rng.randrange(len(running))]
            pool.lost(actor, RuntimeError("died"))
            running = [a for a in running if a != actor]
        elif op < 0.92:
            pool.draining[f"node-{rng.randrange(3)}"] = None
            pool._next_drain_poll = 0.0
            pool.watch_drains(None)
            running = [a for a in running if a in pool.workers]
        elif op < 0.95:
            pool.draining.clear()
        else:
            pool.join_all()
        pool.check()
    assert pool.made > 12 and pool.killed  # replacements started, lost and drained actors killed


def test_in_flight_shards_may_finish_only_when_the_deadline_leaves_time_for_them():
    def worker(busy: int, seconds_left: float | None) -> Worker:
        return Worker(
            None,
            "n" * 56,
            "h",
            busy=busy,
            draining=True,
            deadline=None if seconds_left is None else time.time() + seconds_left,
        )

    assert ActorPool._can_finish(worker(2, 100.0), shard_seconds=10.0)
    assert not ActorPool._can_finish(worker(2, 20.0 + DRAIN_MARGIN_S - 1), shard_seconds=10.0)
    assert not ActorPool._can_finish(worker(1, None), shard_seconds=1.0)  # no deadline given: requeue now
    assert not ActorPool._can_finish(worker(1, 100.0), shard_seconds=None)  # no shard finished yet: unknown
