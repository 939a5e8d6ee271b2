"""Test-only fault injection, switched on by the ``TURBOBATCH_TEST_FAULTS`` environment variable.

Some faults cannot be made for real on a CPU machine (a GPU out-of-memory, a row that makes the
pipeline raise) and a kill must land mid-shard on a tiny model that renders in milliseconds.
The variable holds JSON with any of:

- ``delay_s``: sleep this long per row before each pipeline call (so a kill lands mid-shard);
- ``raise_on_prompt``: raise RuntimeError in a call whose prompts contain this text;
- ``oom_above_batch``: raise ``torch.OutOfMemoryError`` in a call with more rows than this;
- ``kill_on_start``: SIGKILL the worker's own process while it starts, as the kernel's OOM killer
  does to a worker loading weights too big for its node (a crash loop at start-up);
- ``copy_delay_s``: sleep this long before fetching each file of a node's model copy (so a kill
  lands mid-copy).

Unset (always, outside tests), :func:`before_pipeline_call` and :func:`on_worker_start` do nothing.
The driver forwards the variable to actors (jobs/run/cluster.py) so end-to-end tests reach workers in
other processes.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from typing import Any

ENV = "TURBOBATCH_TEST_FAULTS"
KNOWN = {"delay_s", "raise_on_prompt", "oom_above_batch", "kill_on_start", "copy_delay_s"}


@functools.cache
def _faults() -> dict[str, Any]:
    text = os.environ.get(ENV)
    if not text:
        return {}
    faults = json.loads(text)
    unknown = set(faults) - KNOWN
    if unknown:
        raise ValueError(f"{ENV}: unknown fault(s) {sorted(unknown)}; known: {sorted(KNOWN)}")
    return faults


def before_pipeline_call(prompts: list[str]) -> None:
    """Inject the configured faults for one pipeline call of ``prompts``."""
    faults = _faults()
    if not faults:
        return
    if "delay_s" in faults:
        time.sleep(float(faults["delay_s"]) * len(prompts))
    limit = faults.get("oom_above_batch")
    if limit is not None and len(prompts) > int(limit):
        import torch

        raise torch.OutOfMemoryError(f"injected: CUDA out of memory for a batch of {len(prompts)} (> {limit})")
    needle = faults.get("raise_on_prompt")
    if needle and any(needle in p for p in prompts):
        raise RuntimeError(f"injected: the pipeline raised on a prompt containing {needle!r}")


def on_worker_start() -> None:
    """Inject the configured start-up faults (RenderWorker.__init__, before loading the pipeline)."""
    if _faults().get("kill_on_start"):
        os.kill(os.getpid(), signal.SIGKILL)


def before_model_file_copy() -> None:
    """Inject the configured delay before one file of a model copy (models/cache.py)."""
    delay = _faults().get("copy_delay_s")
    if delay:
        time.sleep(float(delay))
