"""The render actors of one job: start them, let each join when ready, replace the dead, leave
draining nodes.

All ``target`` actors are created at once and none is waited for: each joins the moment its
``ready()`` returns, so an actor that cannot be placed (no room yet, the autoscaler still adding a
node) never holds back the others. The autoscaler is asked for room for all of them, and the request
is withdrawn at the end so no GPU is held after the last shard.

A dead actor is replaced for as long as replacements can start; only ``CRASH_LOOP_STARTS`` deaths in
a row during start-up (bad weights, out of memory at load) stop the replacements. An actor on a
draining node gets no new shards; a replacement starts elsewhere at once, and the actor is killed
once its shards are done, or at once when they cannot finish before the drain deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from turbobatch.jobs import nodes
from turbobatch.jobs.cluster import actor_env, actor_resources
from turbobatch.jobs.errors import error_text
from turbobatch.jobs.plan import Shard
from turbobatch.jobs.spec import JobSpec

@dataclass(frozen=True)
class Outcome:
    """How a shard's task ended: its done marker, or the error and why (nodes.DIED: counted as a
    failure; nodes.DRAINED or NODE_LOST: its node left, requeued without counting)."""

    marker: dict[str, Any] | None = None
    error: BaseException | None = None
    cause: str = ""


INFLIGHT_PER_ACTOR = 2  # shards in flight per actor: one renders while the other reads or commits
CRASH_LOOP_STARTS = 3  # start-up deaths in a row that stop the replacements
DRAIN_POLL_S = 1.0  # how often the GCS is asked which nodes are draining
DRAIN_MARGIN_S = 2.0  # in-flight shards of a draining node must end this long before its deadline


def actor_class(spec: JobSpec) -> Any:
    """RenderWorker as a Ray actor class with the resources one actor needs."""
    import ray

    from turbobatch.workers.actor import RenderWorker

    # Its in-flight shards run as threads: one renders while the other reads or commits.
    return ray.remote(RenderWorker).options(num_cpus=spec.worker_cpus, num_gpus=spec.worker_gpus or 0,
                                            max_concurrency=INFLIGHT_PER_ACTOR,
                                            runtime_env={"env_vars": actor_env()})  # fmt: skip


@dataclass
class Worker:
    """A ready actor and where it runs."""

    handle: Any
    node_id: str | None
    host: str
    busy: int = 0  # shards in flight
    draining: bool = False  # its node is draining: no new shards
    deadline: float | None = None  # the drain deadline (time.time() seconds), None when unknown


class ActorPool:
    def __init__(self, spec: JobSpec, target: int, note: Callable[[str], None]) -> None:
        self.spec, self.target, self.note = spec, target, note
        self.bundle = actor_resources(spec)
        self.cls: Any = None
        self.workers: dict[Any, Worker] = {}  # actor id -> ready actor
        self.starting: dict[Any, Any] = {}  # ready() ref -> actor handle
        self.gone: dict[Any, str] = {}  # actor id -> why it left (its other in-flight shard asks too)
        self.failed_starts = 0  # start-up deaths in a row
        self.crash_cause: str | None = None  # set once a crash loop stopped the replacements
        self.ever_ready = False
        self._next_drain_poll = 0.0

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Create every actor now, waiting for none; ask the autoscaler for room for all."""
        self.cls = actor_class(self.spec)
        failed = nodes.request_resources([self.bundle] * self.target)
        if failed:
            self.note(f"could not ask the autoscaler for resources ({failed}); actors wait for room as it comes")
        self._top_up()

    def shutdown(self) -> None:
        """Kill every actor and withdraw the resource request."""
        import ray

        for actor in [*(w.handle for w in self.workers.values()), *self.starting.values()]:
            ray.kill(actor)
        self.workers.clear()
        self.starting.clear()
        nodes.request_resources([])

    def _top_up(self) -> None:
        """Start actors until ``target`` are ready or starting (draining ones do not count)."""
        if self.crash_cause is not None or self.cls is None:
            return
        for _ in range(self.target - len(self.starting) - self.usable_count):
            actor = self.cls.remote(self.spec)
            self.starting[actor.ready.remote()] = actor

    # -- counts ---------------------------------------------------------------------------
    @property
    def usable_count(self) -> int:
        """Ready actors that take new shards."""
        return sum(not w.draining for w in self.workers.values())

    @property
    def gave_up(self) -> bool:
        """A crash loop stopped the replacements and no actor is left."""
        return self.crash_cause is not None and not self.workers and not self.starting

    # -- starting -------------------------------------------------------------------------
    def on_started(self, ref: Any) -> None:
        """An actor's ready() returned: it joins, or its start-up failure counts toward a crash loop."""
        import ray

        actor = self.starting.pop(ref)
        try:
            info = ray.get(ref)
        except ray.exceptions.RayError as e:
            ray.kill(actor)
            self._start_failed(e, nodes.actor_hex(actor))
            return
        self.failed_starts = 0
        self.ever_ready = True
        self.workers[actor._actor_id] = Worker(actor, info.get("node_id"), info.get("host", "?"))

    def _start_failed(self, e: BaseException, actor_id: str) -> None:
        if self.crash_cause is not None:
            return  # replacements already stopped
        cause = error_text(e)
        if nodes.loss_cause(e, actor_id, None, draining=False) == nodes.DIED:
            self.failed_starts += 1  # a lost or preempted node says nothing about the actor
        if self.failed_starts < CRASH_LOOP_STARTS:
            self.note(f"a render worker could not start ({cause}); starting another")
            self._top_up()
            return
        self.crash_cause = f"{self.failed_starts} render actors in a row died while starting; the last: {cause}"
        self.note(f"no more replacements: {self.crash_cause}")

    # -- shards ---------------------------------------------------------------------------
    def submit(self, shard: Shard) -> tuple[Any, Any] | None:
        """Send ``shard`` to the least busy actor that takes shards: (actor id, task ref), or None."""
        free = [(a, w) for a, w in self.workers.items() if not w.draining and w.busy < INFLIGHT_PER_ACTOR]
        if not free:
            return None
        actor_id, worker = min(free, key=lambda item: item[1].busy)
        worker.busy += 1
        return actor_id, worker.handle.render_shard.remote(shard)

    def wait(self, running: list[Any], timeout: float) -> list[Any]:
        """Wait up to ``timeout`` s for a shard task in ``running`` to end, or an actor to start
        (it joins here); returns the shard tasks that ended."""
        import ray

        refs = [*running, *self.starting]
        if not refs:
            time.sleep(timeout)
            return []
        done, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        ended = []
        for ref in done:
            if ref in self.starting:
                self.on_started(ref)
            else:
                ended.append(ref)
        return ended

    def outcome(self, actor_id: Any, ref: Any) -> Outcome:
        """The ended task's marker, or its error; an actor error drops the actor (``lost``)."""
        import ray

        try:
            return Outcome(marker=ray.get(ref))
        except ray.exceptions.RayError as e:
            cause = self.lost(actor_id, e) if isinstance(e, ray.exceptions.RayActorError) else nodes.DIED
            return Outcome(error=e, cause=cause)

    def finished(self, actor_id: Any) -> None:
        """One of the actor's shards ended; a draining actor left idle is released at once."""
        worker = self.workers.get(actor_id)
        if worker is None:
            return
        worker.busy -= 1
        if worker.draining and worker.busy == 0:
            self._release(actor_id, "its shards are done")

    def lost(self, actor_id: Any, error: BaseException) -> str:
        """The actor failed a shard with a Ray actor error: drop it, start a replacement, and say
        why it left (nodes.DRAINED, NODE_LOST or DIED), the same for each of its shards."""
        import ray

        if actor_id in self.gone:
            return self.gone[actor_id]
        worker = self.workers.pop(actor_id, None)
        if worker is None:
            return nodes.DIED
        cause = nodes.loss_cause(error, actor_id.hex(), worker.node_id, worker.draining)
        self.gone[actor_id] = cause
        ray.kill(worker.handle)
        if not worker.draining:  # a draining actor's replacement started with the drain
            what = "was lost with its node" if cause == nodes.NODE_LOST else "died"
            self.note(f"a render worker {what}; starting a replacement")
            self._top_up()
        return cause

    # -- draining nodes -------------------------------------------------------------------
    def watch_drains(self, shard_seconds: float | None) -> None:
        """Every DRAIN_POLL_S: actors on newly draining nodes take no new shards and get a
        replacement; in-flight shards that cannot finish before the deadline are given up (the
        actor is killed: its shards come back as DRAINED and are requeued)."""
        now = time.monotonic()
        if now < self._next_drain_poll or not self.workers:
            return
        self._next_drain_poll = now + DRAIN_POLL_S
        draining = nodes.draining_nodes()
        for actor_id, worker in list(self.workers.items()):
            if not worker.draining and worker.node_id in draining:
                worker.draining, worker.deadline = True, draining[worker.node_id]
                left = nodes.seconds_left(worker.deadline)
                when = "no deadline given" if left is None else f"deadline in {max(0.0, left):.0f} s"
                self.note(f"node {worker.node_id[:12]} ({worker.host}) is draining ({when}): no new shards there; "
                          "starting a replacement")  # fmt: skip
                self._top_up()
            if worker.draining and worker.busy == 0:
                self._release(actor_id, "no shard in flight")
            elif worker.draining and not self._can_finish(worker, shard_seconds):
                self._release(actor_id, f"its {worker.busy} in-flight shard(s) cannot finish before the deadline: "
                              "requeued, not counted as retries")  # fmt: skip

    @staticmethod
    def _can_finish(worker: Worker, shard_seconds: float | None) -> bool:
        left = nodes.seconds_left(worker.deadline)
        if left is None or shard_seconds is None:
            return False  # unknown: requeue at once rather than lose them at the deadline
        return worker.busy * shard_seconds + DRAIN_MARGIN_S <= left

    def _release(self, actor_id: Any, why: str) -> None:
        """Kill a draining node's actor; its in-flight shards come back as DRAINED."""
        import ray

        worker = self.workers.pop(actor_id)
        self.gone[actor_id] = nodes.DRAINED
        ray.kill(worker.handle)
        self.note(f"released the render worker on draining node {worker.node_id[:12]}: {why}")

    # -- why nothing is ready -------------------------------------------------------------
    def describe_waiting(self) -> str:
        """What the starting actors wait for, for a stall message."""
        if self.crash_cause is not None and not self.starting:
            return f"replacements stopped: {self.crash_cause}"
        placed = sum(nodes.actor_placed(nodes.actor_hex(a)) for a in self.starting.values())
        pending = len(self.starting) - placed
        parts = []
        if pending:
            reason = nodes.pending_reason(self.bundle, nodes.alive_nodes().values())
            parts.append(f"{_actors(pending)} pending: {reason}")
        if placed:
            parts.append(f"{_actors(placed)} placed but still starting (loading the pipeline)")
        return "; ".join(parts) or "no render actor is starting"


def _actors(n: int) -> str:
    return f"{n} render actor{'' if n == 1 else 's'}"
