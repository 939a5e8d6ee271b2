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

from turbobatch.errors import error_text
from turbobatch.jobs.run import nodes
from turbobatch.jobs.run.cluster import actor_env, actor_resources
from turbobatch.output.shard import Shard
from turbobatch.spec.resolved import ResolvedJob


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


def actor_class(spec: ResolvedJob) -> Any:
    """RenderWorker as a Ray actor class with the resources one actor needs."""
    import ray

    from turbobatch.workers.actor import RenderWorker

    # Its in-flight shards run as threads: one renders while the other reads or commits.
    return ray.remote(RenderWorker).options(
        num_cpus=spec.worker_cpus,
        num_gpus=spec.worker_gpus or 0,
        max_concurrency=INFLIGHT_PER_ACTOR,
        runtime_env={"env_vars": actor_env()},
    )


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
    def __init__(
        self,
        spec: ResolvedJob,
        target: int,
        note: Callable[[str], None],
        inflight: int = INFLIGHT_PER_ACTOR,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec, self.target, self.note = spec, target, note
        self.inflight, self.clock = inflight, clock  # shards in flight per actor; the drain poll's clock
        self.bundle = actor_resources(spec)
        self.cls: Any = None
        self.workers: dict[Any, Worker] = {}  # actor id -> ready actor
        # Actors that take shards, by shards in flight (0 .. inflight-1), each an insertion-ordered set:
        # submit picks the least busy in O(1), not by a scan of 1,000 actors (benchmarks/driver_scale.py).
        self.free: list[dict[Any, None]] = [{} for _ in range(inflight)]
        self._usable = 0  # ready actors not draining
        self.starting: dict[Any, Any] = {}  # ready() ref -> actor handle
        self.gone: dict[Any, str] = {}  # actor id -> why it left (its other in-flight shard asks too)
        self.failed_starts = 0  # start-up deaths in a row
        self.crash_cause: str | None = None  # set once a crash loop stopped the replacements
        self.ever_ready = False
        self._next_drain_poll = 0.0

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Create every actor now, waiting for none; ask the autoscaler for room for all."""
        self.cls = self.cls or actor_class(self.spec)
        failed = nodes.request_resources([self.bundle] * self.target)
        if failed:
            self.note(f"could not ask the autoscaler for resources ({failed}); actors wait for room as it comes")
        self._top_up()

    def shutdown(self) -> None:
        """Kill every actor and withdraw the resource request."""
        for actor in [*(w.handle for w in self.workers.values()), *self.starting.values()]:
            self._kill(actor)
        self.workers.clear()
        self.free = [{} for _ in range(self.inflight)]
        self._usable = 0
        self.starting.clear()
        nodes.request_resources([])

    def _top_up(self) -> None:
        """Start actors until ``target`` are ready or starting (draining ones do not count)."""
        if self.crash_cause is not None or self.cls is None:
            return
        for _ in range(self.target - len(self.starting) - self.usable_count):
            actor = self._new_actor()
            self.starting[actor.ready.remote()] = actor

    # -- counts ---------------------------------------------------------------------------
    @property
    def usable_count(self) -> int:
        """Ready actors that take new shards."""
        return self._usable

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
            info = self._get(ref)
        except ray.exceptions.RayError as e:
            self._kill(actor)
            self._start_failed(e, nodes.actor_hex(actor))
            return
        self.failed_starts = 0
        self.ever_ready = True
        self.workers[actor._actor_id] = Worker(actor, info.get("node_id"), info.get("host", "?"))
        self.free[0][actor._actor_id] = None
        self._usable += 1

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
        bucket = next((b for b in self.free if b), None)
        if bucket is None:
            return None
        actor_id = next(iter(bucket))
        worker = self.workers[actor_id]
        self._set_busy(actor_id, worker, worker.busy + 1)
        return actor_id, worker.handle.render_shard.remote(shard)

    def _set_busy(self, actor_id: Any, worker: Worker, busy: int) -> None:
        """Change an actor's shards in flight, moving it between the ``free`` buckets."""
        self._unfree(actor_id, worker)
        worker.busy = busy
        if not worker.draining and busy < self.inflight:
            self.free[busy][actor_id] = None

    def _unfree(self, actor_id: Any, worker: Worker) -> None:
        if worker.busy < self.inflight:
            self.free[worker.busy].pop(actor_id, None)

    def _leave(self, actor_id: Any) -> Worker:
        """Drop a ready actor from the pool (lost, or released from a draining node)."""
        worker = self.workers.pop(actor_id)
        self._unfree(actor_id, worker)
        self._usable -= not worker.draining
        return worker

    def wait(self, running: list[Any], timeout: float) -> list[Any]:
        """Wait up to ``timeout`` s for a shard task in ``running`` to end, or an actor to start
        (it joins here); returns the shard tasks that ended."""
        refs = [*running, *self.starting]
        if not refs:
            time.sleep(timeout)
            return []
        done = self._wait(refs, timeout)
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
            return Outcome(marker=self._get(ref))
        except ray.exceptions.RayError as e:
            cause = self.lost(actor_id, e) if isinstance(e, ray.exceptions.RayActorError) else nodes.DIED
            return Outcome(error=e, cause=cause)

    def finished(self, actor_id: Any) -> None:
        """One of the actor's shards ended; a draining actor left idle is released at once."""
        worker = self.workers.get(actor_id)
        if worker is None:
            return
        self._set_busy(actor_id, worker, worker.busy - 1)
        if worker.draining and worker.busy == 0:
            self._release(actor_id, "its shards are done")

    def lost(self, actor_id: Any, error: BaseException) -> str:
        """The actor failed a shard with a Ray actor error: drop it, start a replacement, and say
        why it left (nodes.DRAINED, NODE_LOST or DIED), the same for each of its shards."""
        if actor_id in self.gone:
            return self.gone[actor_id]
        if actor_id not in self.workers:
            return nodes.DIED
        worker = self._leave(actor_id)
        cause = self._loss_cause(error, actor_id.hex(), worker)
        self.gone[actor_id] = cause
        self._kill(worker.handle)
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
        now = self.clock()
        if now < self._next_drain_poll or not self.workers:
            return
        self._next_drain_poll = now + DRAIN_POLL_S
        draining = self._draining_nodes()
        for actor_id, worker in list(self.workers.items()):
            if not worker.draining and worker.node_id in draining:
                self._unfree(actor_id, worker)
                self._usable -= 1
                worker.draining, worker.deadline = True, draining[worker.node_id]
                left = nodes.seconds_left(worker.deadline)
                when = "no deadline given" if left is None else f"deadline in {max(0.0, left):.0f} s"
                self.note(
                    f"node {worker.node_id[:12]} ({worker.host}) is draining ({when}): no new shards there; "
                    "starting a replacement"
                )
                self._top_up()
            if worker.draining and worker.busy == 0:
                self._release(actor_id, "no shard in flight")
            elif worker.draining and not self._can_finish(worker, shard_seconds):
                self._release(
                    actor_id,
                    f"its {worker.busy} in-flight shard(s) cannot finish before the deadline: "
                    "requeued, not counted as retries",
                )

    @staticmethod
    def _can_finish(worker: Worker, shard_seconds: float | None) -> bool:
        left = nodes.seconds_left(worker.deadline)
        if left is None or shard_seconds is None:
            return False  # unknown: requeue at once rather than lose them at the deadline
        return worker.busy * shard_seconds + DRAIN_MARGIN_S <= left

    def _release(self, actor_id: Any, why: str) -> None:
        """Kill a draining node's actor; its in-flight shards come back as DRAINED."""
        worker = self._leave(actor_id)
        self.gone[actor_id] = nodes.DRAINED
        self._kill(worker.handle)
        self.note(f"released the render worker on draining node {worker.node_id[:12]}: {why}")

    # -- Ray: every call into the cluster, one method each (benchmarks/driver_scale.py simulates them) ---
    def _new_actor(self) -> Any:
        return self.cls.remote(self.spec)

    def _wait(self, refs: list[Any], timeout: float) -> list[Any]:
        import ray

        # One blocking wait, then everything that ended meanwhile in one more call: one pass of the
        # scheduler's loop per batch of completions, not per completion (12% less driver CPU per
        # shard at 2,000 in flight: docs/BENCHMARKS.md, "The driver at scale").
        done = ray.wait(refs, num_returns=1, timeout=timeout)[0]
        if done and len(refs) > 1:
            done = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)[0]
        return done

    def _get(self, ref: Any) -> Any:
        import ray

        return ray.get(ref)

    def _kill(self, actor: Any) -> None:
        import ray

        ray.kill(actor)

    def _draining_nodes(self) -> dict[str, float | None]:
        return nodes.draining_nodes()

    def _loss_cause(self, error: BaseException, actor_hex: str, worker: Worker) -> str:
        return nodes.loss_cause(error, actor_hex, worker.node_id, worker.draining)

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
