"""How long render actors took to start, from the done markers: what start-up costs a job.

Each worker's first done marker carries its start-up record (workers/actor.py): ``startup_s``
(``fetch``: its weights reaching the node, copied or found in the node's cache, waiting for another
actor's copy included; ``load``: from_pretrained and moving to the device; ``first_batch``: its first
rendered batch, warm-up included) and ``model_fetch`` (per component: copied, cached or in_place).
The end-of-run summary and ``turbobatch status`` show min / median / max over actors.
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

PHASES = ("fetch", "load", "first_batch")
ACTIONS = {"copied": "copies", "cached": "cache_hits", "in_place": "in_place"}


def startup_report(markers: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Start-up over the actors whose first marker is among ``markers``; None when none is
    (markers written before start-up was recorded)."""
    records = [m for m in markers if m.get("startup_s")]
    if not records:
        return None
    report: dict[str, Any] = {"actors": len(records)}
    for phase in PHASES:
        values = [r["startup_s"][phase] for r in records if r["startup_s"].get(phase) is not None]
        report[f"{phase}_s"] = _spread(values)
    fetches = [f for r in records for f in r.get("model_fetch", [])]
    actions = Counter(f["action"] for f in fetches)
    report.update({name: actions[action] for action, name in ACTIONS.items()})
    report["copied_bytes"] = sum(f["bytes"] for f in fetches if f["action"] == "copied")
    report["device_kinds"] = dict(Counter(r.get("device_kind") or "unknown" for r in records))  # actors per kind
    return report


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def startup_line(report: dict[str, Any] | None) -> str | None:
    """``start-up: 2 actors, min / median / max: fetch 0.0 / 1.2 / 2.4 s, ...; model folders: 1 copied
    (2.6 GiB), 1 from the node's cache, 0 loaded in place``."""
    if not report:
        return None
    phases = ", ".join(f"{phase.replace('_', ' ')} {_fmt(report[f'{phase}_s'])}" for phase in PHASES)
    copied = report["copied_bytes"]
    size = f" ({copied / 2**30:.2f} GiB)" if copied >= 2**30 else f" ({copied / 2**20:.1f} MiB)" if copied else ""
    actors = f"{report['actors']} actor{'' if report['actors'] == 1 else 's'}"
    return (
        f"start-up: {actors}, min / median / max: {phases}; model folders: {report['copies']} copied{size}, "
        f"{report['cache_hits']} from the node's cache, {report['in_place']} loaded in place"
    )


def _fmt(spread: dict[str, float] | None) -> str:
    if spread is None:
        return "-"
    return f"{spread['min']:.1f} / {spread['median']:.1f} / {spread['max']:.1f} s"
