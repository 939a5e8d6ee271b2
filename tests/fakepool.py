"""A scripted stand-in for jobs/run/pool.py's ActorPool, so the scheduler's logic (requeue, retries,
stalls, ordering, --min-workers) tests in milliseconds without Ray.

Time is simulated: ``wait`` ends the oldest in-flight shard at once (with the outcome the test
scripted for it) and advances the clock by ``shard_s``; with nothing in flight it advances the
clock by the timeout it was given, as a real wait would sleep.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from turbobatch.jobs.run import nodes
from turbobatch.jobs.run.pool import Outcome
from turbobatch.output.shard import Shard

OK = "ok"


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakePool:
    """``actors`` actors that join after ``start_waits`` waits; ``script[shard_id]`` lists the
    outcomes of the shard's attempts in order: OK, an exception (a counted failure: DIED), or
    (nodes.DRAINED | nodes.NODE_LOST, exception) for an actor that left with its node."""

    actors: int = 2
    inflight: int = 2
    start_waits: int = 0
    shard_s: float = 1.0
    script: dict[int, list[Any]] = field(default_factory=dict)
    clock: Clock = field(default_factory=Clock)
    hang: bool = False  # shards never end (a stalled cluster)
    drain_after: dict[int, int] = field(default_factory=dict)  # actor -> drained once it got this many shards
    crash_cause: str | None = None
    ever_ready: bool = False
    starting: dict[Any, Any] = field(default_factory=dict)
    submitted: list[tuple[int, int]] = field(default_factory=list)  # (actor, shard id), in order
    busy: dict[int, int] = field(default_factory=dict)
    running: deque[tuple[Any, int, Shard]] = field(default_factory=deque)
    draining: set[int] = field(default_factory=set)
    first_submit_wait: int | None = None  # how many waits had passed when the first shard went out
    _waits: int = 0
    _refs: int = 0

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        self.starting = {f"start-{a}": a for a in range(self.actors)}

    def shutdown(self) -> None:
        self.starting.clear()

    @property
    def usable_count(self) -> int:
        return 0 if self.starting else self.actors - len(self.draining)

    @property
    def gave_up(self) -> bool:
        return self.crash_cause is not None and not self.busy

    def describe_waiting(self) -> str:
        return f"{len(self.starting)} fake actors starting"

    def watch_drains(self, shard_seconds: float | None) -> None:
        for actor, limit in self.drain_after.items():
            if sum(a == actor for a, _ in self.submitted) >= limit:
                self.draining.add(actor)

    # -- shards -------------------------------------------------------------------------
    def submit(self, shard: Shard) -> tuple[Any, Any] | None:
        free = [a for a in range(self.actors) if a not in self.draining and self.busy.get(a, 0) < self.inflight]
        if self.starting or not free:
            return None
        actor = min(free, key=lambda a: self.busy.get(a, 0))
        self.busy[actor] = self.busy.get(actor, 0) + 1
        self._refs += 1
        ref = f"ref-{self._refs}"
        self.running.append((ref, actor, shard))
        self.submitted.append((actor, shard.shard_id))
        if self.first_submit_wait is None:
            self.first_submit_wait = self._waits
        return actor, ref

    def wait(self, running: list[Any], timeout: float) -> list[Any]:
        self._waits += 1
        if self.starting and self._waits > self.start_waits:
            self.starting.clear()
            self.ever_ready = True
        if self.hang or not self.running:
            self.clock.now += timeout
            return []
        self.clock.now += self.shard_s
        ref, _, _ = self.running[0]
        return [ref]

    def outcome(self, actor_id: Any, ref: Any) -> Outcome:
        entry = next(e for e in self.running if e[0] == ref)
        self.running.remove(entry)
        result = self.script.get(entry[2].shard_id, [OK])
        step = result.pop(0) if len(result) > 1 else result[0]
        if step == OK:
            return Outcome(marker={"shard": entry[2].shard_id, "ok": entry[2].num_images, "timings_s": {"total": 1.0}})
        if isinstance(step, tuple):
            cause, error = step
            return Outcome(error=error, cause=cause)
        return Outcome(error=step, cause=nodes.DIED)

    def finished(self, actor_id: Any) -> None:
        self.busy[actor_id] -= 1


@dataclass
class RecordingMetrics:
    events: list[tuple[str, Any]] = field(default_factory=list)

    def shard_committed(self, marker: dict[str, Any]) -> None:
        self.events.append(("committed", marker["shard"]))

    def shard_failed(self) -> None:
        self.events.append(("failed", None))

    def shard_retried(self, cause: str) -> None:
        self.events.append(("retried", cause))

    def actors(self, ready: int, starting: int) -> None:
        pass

    def close(self) -> None:
        self.events.append(("closed", None))


def shards(n: int, rows: int = 4) -> list[Shard]:
    return [Shard(i, "in.parquet", i * rows, (i + 1) * rows, i * rows, 6) for i in range(n)]
