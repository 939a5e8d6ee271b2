"""Where a worker's shard time went, from the done markers' ``timings_s`` (docs/OUTPUT.md).

"pipeline" is the pipeline calls with decode, stats and the copy to the host: on a GPU, the
time the device is busy. Every other share is time the device sits idle waiting for the CPU.
"""

from __future__ import annotations

from collections.abc import Iterable


def summed(markers: Iterable[dict]) -> dict[str, float]:
    """Each timing summed over the markers' shards."""
    total: dict[str, float] = {}
    for marker in markers:
        for name, seconds in marker["timings_s"].items():
            total[name] = total.get(name, 0.0) + seconds
    return total


def profile_line(t: dict[str, float]) -> str:
    """Shares of shard time: pipeline calls vs everything that keeps the device idle."""
    parts = {"pipeline calls": t["pipeline"], "reading rows": t["read"], "waiting for encodes": t["writer_wait"],
             "loop (keys, records, queueing)": t["render"] - t["pipeline"] - t["writer_wait"],
             "commit (last encodes, tar, metadata, marker)": t["commit"]}  # fmt: skip
    return ", ".join(f"{name} {100 * seconds / t['total']:.1f}%" for name, seconds in parts.items())
