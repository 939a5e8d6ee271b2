"""What the cluster says about its nodes: which are draining and until when, which are alive, what
fits where, and asking the autoscaler for room.

Ray announces a spot preemption notice, an autoscaler scale-down or ``ray drain-node`` as a draining
node with a deadline; the GCS is the only place that says so, and ``ray._private.state`` is how Ray
Data and Ray Serve read it too (Ray 2.60 has no public API for it). Every query here is best-effort:
a failed query reads as "nothing known", never as a failed job.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

Resources = dict[str, float]

DRAINED, NODE_LOST, DIED = "drained", "node lost", "died"  # why an actor left (loss_cause)


# -- pure helpers ---------------------------------------------------------------------------
def slots(node: Resources, bundle: Resources) -> int:
    """How many actors of ``bundle`` fit in a node with ``node`` resources."""
    fits = [math.floor(node.get(name, 0.0) / amount + 1e-9) for name, amount in bundle.items() if amount > 0]
    return max(0, min(fits)) if fits else 1_000_000


def room(nodes: Iterable[Resources], bundle: Resources) -> int:
    """How many actors of ``bundle`` the nodes can hold together (each actor on one node)."""
    return sum(slots(node, bundle) for node in nodes)


def describe(resources: Resources) -> str:
    """``{'CPU': 1, 'GPU': 0.5}``: whole numbers without a trailing .0."""
    shown = {k: int(v) if float(v).is_integer() else v for k, v in sorted(resources.items())}
    return repr(shown)


def pending_reason(bundle: Resources, nodes: Iterable[Resources]) -> str:
    """Why an actor of ``bundle`` waits: no node is big enough, or none has it free."""
    nodes = list(nodes)
    if any(slots(node, bundle) for node in nodes):
        return f"the cluster has no node with {describe(bundle)} free"
    shapes = sorted({describe({k: node.get(k, 0.0) for k in bundle}) for node in nodes})
    have = f"its nodes have {', '.join(shapes[:3])}" if shapes else "it has no node"
    return f"no node of the cluster has {describe(bundle)} ({have}); add such a node or lower the request"


# -- queries --------------------------------------------------------------------------------
def alive_nodes() -> dict[str, Resources]:
    """Node id (hex) -> total resources, for the nodes the GCS counts alive."""
    import ray

    try:
        return {n["NodeID"]: dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")}
    except Exception:  # noqa: BLE001 - best effort
        return {}


def draining_nodes() -> dict[str, float | None]:
    """Node id (hex) -> drain deadline (``time.time()`` seconds; None when Ray gives none)."""
    import ray._private.state

    try:
        deadlines = ray._private.state.state.get_draining_nodes()  # hex id -> ms since the epoch, 0: none
    except Exception:  # noqa: BLE001 - best effort
        return {}
    return {node: (ms / 1000 if ms else None) for node, ms in deadlines.items()}


def node_types() -> list[Resources] | None:
    """Resources of each node type the autoscaler may add, or None when Ray does not say (no
    autoscaler, or one that publishes no cluster config, such as Ray's v1 autoscaler)."""
    import ray._private.state

    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # noqa: BLE001 - best effort
        return None
    if config is None or not config.node_group_configs:
        return None
    return [dict(group.resources) for group in config.node_group_configs if group.max_count != 0]


def actor_placed(actor_id: str) -> bool:
    """Whether the GCS has placed a starting actor on a node (False: waiting for resources)."""
    import ray._private.state

    try:
        return bool(ray._private.state.actors(actor_id)["Address"]["Port"])
    except Exception:  # noqa: BLE001 - best effort
        return False


def died_with_node(actor_id: str) -> bool:
    """Whether the GCS recorded the actor's death as its node's (health check lost, preempted)."""
    import ray._private.state

    try:
        cause = ray._private.state.actors(actor_id)["DeathCause"]
        return cause.HasField("actor_died_error_context") and cause.actor_died_error_context.HasField("node_death_info")
    except Exception:  # noqa: BLE001 - best effort
        return False


def loss_cause(error: BaseException, actor_id: str, node_id: str | None, draining: bool) -> str:
    """Why an actor left: DRAINED (its node was draining, or Ray says preempted), NODE_LOST (its
    node died or cannot be reached: a socket closed, the GCS still thinks it alive) or DIED (its
    process died on a node that is fine: an infrastructure failure of the shard)."""
    import ray

    if draining or getattr(error, "preempted", False):
        return DRAINED
    if isinstance(error, ray.exceptions.ActorUnavailableError) or died_with_node(actor_id):
        return NODE_LOST
    if node_id is not None and node_id not in alive_nodes():
        return NODE_LOST
    return DIED


def request_resources(bundles: list[Resources]) -> str | None:
    """Ask the autoscaler for room for ``bundles`` (a persistent request: an empty list withdraws
    it). Harmless on a cluster without an autoscaler. Returns why it failed, or None."""
    from ray.autoscaler.sdk import request_resources as ray_request

    try:
        ray_request(bundles=[dict(b) for b in bundles])
    except Exception as e:  # noqa: BLE001 - a hint to the autoscaler, never a reason to fail
        return f"{type(e).__name__}: {e}"
    return None


def seconds_left(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.time()


def actor_hex(actor: Any) -> str:
    return actor._actor_id.hex()
