"""The driver alone at cluster scale: can one driver keep 1,000 GPUs busy?

Two measurements, both of the real scheduler (jobs/run/schedule.py) and the real ActorPool logic
(jobs/run/pool.py: actor choice, drains, losses, replacements):

1. **Simulated**: a pool whose Ray calls (jobs/run/pool.py's ``_wait``, ``_get``, ``_kill``,
   ``_draining_nodes``, ``_new_actor``, ``_loss_cause``) are an event simulation in simulated time:
   1,000 actors on 125 nodes of 8, 2 shards in flight each, shard times drawn around a mean, some
   actors dying, some nodes draining, a few shards failing (bugs, and storage timeouts that are
   retried). Simulated time runs as fast as the driver can take completions, so completions per
   wall-clock second is the driver's ceiling. Each size runs in its own process, for its own peak
   RSS, at 10, 100 and 1,000 actors, and at 1,000 actors with 10x fewer shards (memory flat in
   shards done?).
2. **Real Ray**: a few real actors with a high ``max_concurrency`` whose render only sleeps, so that
   2,000 real object references are in flight on this machine; the real ``ray.wait``, progress bar
   and Ray metrics are in the loop.

Ends with one JSON line. ``python benchmarks/driver_scale.py [--shards N] [--ray-shards N]``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turbobatch.jobs.run import nodes  # noqa: E402
from turbobatch.jobs.run.pool import ActorPool, Worker  # noqa: E402
from turbobatch.jobs.run.progress import Progress  # noqa: E402
from turbobatch.jobs.run.schedule import ShardScheduler  # noqa: E402
from turbobatch.output.shard import Shard  # noqa: E402
from turbobatch.output.storage import Folder  # noqa: E402
from turbobatch.spec.resolved import ResolvedJob  # noqa: E402

GPUS_PER_NODE = 8


@dataclass(eq=False)
class SimRef:
    """An object reference in the simulation: resolves at ``at`` to a value or an error."""

    at: float
    value: Any = None
    error: BaseException | None = None
    actor: Any = None  # its actor: a task of a killed or dead actor fails as Ray's would

    def __lt__(self, other: SimRef) -> bool:
        return self.at < other.at


@dataclass
class Simulation:
    """Simulated Ray: the clock, pending references in a heap, actors and their nodes."""

    mean_s: float
    rng: random.Random
    death_rate: float  # per shard: its actor dies before finishing it
    drain_every: int  # a node starts draining after every this many submitted shards (0: never)
    fail_rate: float  # per shard: a bug (failed marker) or a storage timeout (retried)
    now: float = 0.0
    heap: list[tuple[float, int, SimRef]] = field(default_factory=list)
    seq: int = 0
    submitted: int = 0
    draining: dict[str, float | None] = field(default_factory=dict)
    next_actor: int = 0

    def clock(self) -> float:
        return self.now

    def resolve_at(self, ref: SimRef) -> SimRef:
        self.seq += 1
        heapq.heappush(self.heap, (ref.at, self.seq, ref))
        return ref

    def shard_ref(self, actor: SimActor, shard: Shard) -> SimRef:
        self.submitted += 1
        if self.drain_every and self.submitted % self.drain_every == 0:
            node = f"node-{self.rng.randrange(actor.sim_nodes):04d}"
            self.draining.setdefault(node, time.time() + self.rng.choice([5.0, 3600.0]))
        took = max(0.05, self.rng.gauss(self.mean_s, self.mean_s / 5))
        roll = self.rng.random()
        if roll < self.death_rate:  # the actor dies: this shard and its other in-flight one fail
            actor.dead_at = self.now + took / 2
            return self.resolve_at(SimRef(self.now + took / 2, error=_actor_died(), actor=actor))
        if roll < self.death_rate + self.fail_rate:
            cause = ValueError("bad row") if self.rng.random() < 0.5 else TimeoutError("storage timed out")
            return self.resolve_at(SimRef(self.now + took, error=_task_error(cause), actor=actor))
        marker = {
            "shard": shard.shard_id,
            "ok": shard.num_images,
            "error": 0,
            "node_id": actor.node_id,
            "timings_s": {"total": took, "render": took * 0.9},
            "device_kind": "H100",
        }
        return self.resolve_at(SimRef(self.now + took, value=marker, actor=actor))

    def wait(self, timeout: float) -> list[SimRef]:
        """The first pending reference to resolve, as ``ray.wait(num_returns=1)``, in simulated time."""
        while self.heap:
            at, _, ref = self.heap[0]
            if at > self.now + timeout:
                break
            heapq.heappop(self.heap)
            self.now = max(self.now, at)
            return [ref]
        self.now += timeout
        return []


def _actor_died() -> BaseException:
    import ray

    return ray.exceptions.RayActorError()


def _task_error(cause: BaseException) -> BaseException:
    import ray

    try:
        raise cause
    except BaseException as e:  # noqa: BLE001 - what a remote task's error looks like to ray.get
        error = ray.exceptions.RayTaskError("render_shard", "Traceback: ...", e)
        error.__cause__ = e
        return error


class _Method:
    def __init__(self, call: Any) -> None:
        self.remote = call


class SimActor:
    """A render actor in the simulation: ``ready`` and ``render_shard`` as Ray methods."""

    def __init__(self, sim: Simulation, index: int, nodes_total: int) -> None:
        self.sim, self.sim_nodes = sim, nodes_total
        self.node_id = f"node-{index // GPUS_PER_NODE % nodes_total:04d}"
        self._actor_id = bytes.fromhex(f"{index:032x}")
        self.dead_at: float | None = None
        self.ready = _Method(
            lambda: sim.resolve_at(
                SimRef(sim.now + sim.rng.uniform(1, 20), value={"node_id": self.node_id, "host": self.node_id})
            )
        )
        self.render_shard = _Method(lambda shard: sim.shard_ref(self, shard))


class ActorId(bytes):
    def hex(self) -> str:  # type: ignore[override]
        return bytes.hex(self)


class SimulatedPool(ActorPool):
    """The real ActorPool with its Ray calls answered by the simulation."""

    def __init__(self, spec: ResolvedJob, target: int, sim: Simulation) -> None:
        super().__init__(spec, target, lambda message: None, clock=sim.clock)
        self.sim = sim
        self.node_count = max(1, target // GPUS_PER_NODE)
        self.cls = object()  # no Ray actor class: _new_actor makes simulated ones

    def start(self) -> None:
        self._top_up()

    def _new_actor(self) -> Any:
        actor = SimActor(self.sim, self.sim.next_actor, self.node_count)
        actor._actor_id = ActorId(actor._actor_id)
        self.sim.next_actor += 1
        while actor.node_id in self.sim.draining:  # Ray places no actor on a draining node; the autoscaler
            self.node_count += 1  # adds one (its 8 slots filled one actor at a time, as replacements come)
            actor.node_id = f"node-{self.node_count - 1:04d}"
        return actor

    def _wait(self, refs: list[Any], timeout: float) -> list[Any]:
        return self.sim.wait(timeout)

    def _get(self, ref: SimRef) -> Any:
        dead_at = getattr(ref.actor, "dead_at", None)
        if ref.error is None and dead_at is not None and dead_at <= ref.at:
            raise _actor_died()  # its actor died or was killed (a draining node's) before it finished
        if ref.error is not None:
            raise ref.error
        return ref.value

    def _kill(self, actor: Any) -> None:
        if getattr(actor, "dead_at", None) is None:
            actor.dead_at = self.sim.now

    def _draining_nodes(self) -> dict[str, float | None]:
        return self.sim.draining

    def _loss_cause(self, error: BaseException, actor_hex: str, worker: Worker) -> str:
        return nodes.DRAINED if worker.draining else nodes.DIED


class CountingMetrics:
    """The scheduler's metrics as counters (Ray's metrics need a Ray; the real-Ray run has them)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def _inc(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def shard_committed(self, marker: dict[str, Any]) -> None:
        self._inc("committed")

    def shard_failed(self) -> None:
        self._inc("failed")

    def shard_retried(self, cause: str) -> None:
        self._inc(f"retried {cause}")

    def actors(self, ready: int, starting: int) -> None:
        pass

    def close(self) -> None:
        pass


def plan(n: int, rows: int = 1000) -> list[Shard]:
    return [Shard(i, "s3://bucket/prompts/part-0.parquet", i * rows, (i + 1) * rows, i * rows, 9) for i in range(n)]


def simulate(actors: int, shards: int, mean_s: float, seed: int = 0) -> dict[str, Any]:
    """One simulated run in this process: the scheduler's wall and CPU time, its peak RSS."""
    with tempfile.TemporaryDirectory() as out:
        spec = ResolvedJob(input="in.parquet", output=out, workers=actors, max_retries=3, stall_timeout=3600)
        sim = Simulation(
            mean_s, random.Random(seed), death_rate=0.0005, drain_every=max(50, shards // 20), fail_rate=0.0005
        )
        pending = plan(shards)
        progress = Progress(len(pending), 0, sum(s.num_images for s in pending))
        pool = SimulatedPool(spec, actors, sim)
        metrics = CountingMetrics()
        scheduler = ShardScheduler(spec, Folder(out), progress, set(), pool, metrics, clock=sim.clock)
        wall, cpu = time.perf_counter(), time.process_time()
        scheduler.run(pending)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        progress.close()
    ended = progress.committed + len(progress.failed)
    return {
        "actors": actors,
        "shards": shards,
        "in_flight": actors * pool.inflight,
        "ended": ended,
        "completions_per_s": ended / wall,
        "cpu_ms_per_shard": 1000 * cpu / ended,
        "wall_s": wall,
        "simulated_s": sim.now,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "events": metrics.counts,
    }


def simulate_in_child(actors: int, shards: int, mean_s: float) -> dict[str, Any]:
    """``simulate`` in a fresh process, so each size has its own peak RSS."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(actors), str(shards), str(mean_s)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=100_000, help="simulated shards at 1,000 actors")
    parser.add_argument("--mean-s", type=float, default=10.0, help="simulated seconds per shard (mean)")
    parser.add_argument("--ray-shards", type=int, default=20_000, help="sleeping shards on real Ray")
    parser.add_argument("--ray-actors", type=int, default=4)
    parser.add_argument("--ray-in-flight", type=int, default=2000)
    parser.add_argument("--ray-mean-s", type=float, default=1.0)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(simulate(int(args.child[0]), int(args.child[1]), float(args.child[2]))))
        return
    rows = []
    for actors, shards in (
        (10, args.shards // 100),
        (100, args.shards // 10),
        (1000, args.shards // 10),
        (1000, args.shards),
    ):
        row = simulate_in_child(actors, shards, args.mean_s)
        rows.append(row)
        print(
            f"simulated: {actors:5d} actors, {row['in_flight']:5d} in flight, {shards:7d} shards: "
            f"{row['completions_per_s']:8.0f} completions/s, {row['cpu_ms_per_shard']:.3f} ms CPU per shard, "
            f"peak RSS {row['peak_rss_mb']:.0f} MB ({row['wall_s']:.1f} s wall, {row['simulated_s']:.0f} s "
            f"simulated; {row['events']})",
            flush=True,
        )
    ray_row = {} if args.skip_ray else real_ray(args.ray_shards, args.ray_actors, args.ray_in_flight, args.ray_mean_s)
    big = rows[-1]
    print(
        json.dumps(
            {
                "actors": big["actors"],
                "in_flight": big["in_flight"],
                "shards": big["shards"],
                "simulated_completions_per_s": round(big["completions_per_s"]),
                "ray_completions_per_s": round(ray_row["completions_per_s"]) if ray_row else None,
                "driver_peak_rss_mb": round(big["peak_rss_mb"]),
            }
        )
    )


# -- real Ray -------------------------------------------------------------------------------


def real_ray(shards: int, actors: int, in_flight: int, mean_s: float) -> dict[str, Any]:
    """Sleeping actors on a real local Ray: ``in_flight`` real references, the real ray.wait,
    progress bar and Ray metrics."""
    import ray

    from turbobatch.metrics import DriverMetrics

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        per_actor = in_flight // actors
        sleeper = ray.remote(Sleeper).options(num_cpus=0, max_concurrency=per_actor)
        with tempfile.TemporaryDirectory() as out:
            spec = ResolvedJob(input="in.parquet", output=out, workers=actors, stall_timeout=3600)
            pending = plan(shards)
            progress = Progress(len(pending), 0, sum(s.num_images for s in pending))
            pool = ActorPool(spec, actors, progress.note, inflight=per_actor)
            pool.cls = _Bound(sleeper, mean_s)
            scheduler = ShardScheduler(spec, Folder(out), progress, set(), pool, DriverMetrics("sleeper"))
            wall, cpu = time.perf_counter(), time.process_time()
            scheduler.run(pending)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            progress.close()
    finally:
        ray.shutdown()
    ended = progress.committed + len(progress.failed)
    # The actors start inside the timed run; their first ~mean_s is filling the pipeline.
    row = {
        "shards": shards,
        "actors": actors,
        "in_flight": in_flight,
        "completions_per_s": ended / wall,
        "cpu_ms_per_shard": 1000 * cpu / ended,
        "wall_s": wall,
        "ceiling_per_s": in_flight / mean_s,
    }
    print(
        f"real Ray: {actors} sleeping actors x {per_actor} in flight, {shards} shards of {mean_s:g} s: "
        f"{row['completions_per_s']:.0f} completions/s (ceiling {row['ceiling_per_s']:.0f}/s), "
        f"{row['cpu_ms_per_shard']:.3f} ms driver CPU per shard, {wall:.1f} s",
        flush=True,
    )
    return row


class Sleeper:
    """A render actor whose render only sleeps (async: ``max_concurrency`` shards at once)."""

    def __init__(self, spec: Any, mean_s: float) -> None:
        self.mean_s = mean_s
        self.rng = random.Random(os.getpid())

    def ready(self) -> dict[str, Any]:
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(), "host": "local"}

    async def render_shard(self, shard: Shard) -> dict[str, Any]:
        import asyncio

        took = max(0.01, self.rng.gauss(self.mean_s, self.mean_s / 5))
        await asyncio.sleep(took)
        return {"shard": shard.shard_id, "ok": shard.num_images, "error": 0, "timings_s": {"total": took}}


class _Bound:
    """``pool.cls.remote(spec)`` for the sleeper, with its mean shard time."""

    def __init__(self, cls: Any, mean_s: float) -> None:
        self.cls, self.mean_s = cls, mean_s

    def remote(self, spec: Any) -> Any:
        return self.cls.remote(spec, self.mean_s)


if __name__ == "__main__":
    main()
