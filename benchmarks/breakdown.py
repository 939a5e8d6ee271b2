"""Where a worker's device time goes: time per pipeline component, measured in a real shard.

Forward hooks on the text encoders, the UNet and the VAE's decoder record CUDA events around
each call (perf_counter on CPU), so the breakdown comes from the worker's own pipeline calls,
not from a separate model of them. With FLOPs per image (flops.py) it gives each component's
achieved TFLOP/s: which part keeps the worker from the card's matrix-multiply rate.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

# component -> the pipeline attributes whose forward calls it covers; flops.py's keys
COMPONENTS = {
    "text_encoders": ("text_encoder", "text_encoder_2"),
    "unet": ("unet",),
    "transformer": ("transformer",),  # the DiT families (Z-Image, FLUX.2)
    "vae_decode": ("vae.decoder",),
}


def _module(pipe: Any, path: str) -> torch.nn.Module | None:
    obj = pipe
    for name in path.split("."):
        obj = getattr(obj, name, None)
    return obj


class _Clock:
    """Start/stop marks on the device's timeline: CUDA events, or perf_counter on CPU."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def ms(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1000


@contextmanager
def component_times(pipe: Any, cuda: bool) -> Iterator[dict[str, float]]:
    """Yields a dict filled, on exit, with total milliseconds per component of every call inside."""
    present = {c: p for c, p in COMPONENTS.items() if any(_module(pipe, path) is not None for path in p)}
    clock, marks, handles = _Clock(cuda), {name: [] for name in present}, []
    for component, paths in present.items():
        for module in filter(None, (_module(pipe, p) for p in paths)):
            started: list[Any] = []
            handles.append(module.register_forward_pre_hook(lambda m, a, s=started: s.append(clock.mark())))
            handles.append(
                module.register_forward_hook(
                    lambda m, a, o, s=started, c=component: marks[c].append((s.pop(), clock.mark()))
                )
            )
    totals: dict[str, float] = {}
    try:
        yield totals
    finally:
        for handle in handles:
            handle.remove()
        if cuda:
            torch.cuda.synchronize()
        totals.update({c: sum(clock.ms(a, b) for a, b in pairs) for c, pairs in marks.items()})


def breakdown_line(totals: dict[str, float], images: int, wall_s: float, flops: dict[str, float]) -> str:
    """'text_encoders 0.9 ms/image (50 TFLOP/s), unet ...; the rest ...' against the shard's wall time."""
    wall_ms = wall_s * 1000 / images
    parts = []
    for component, total in totals.items():
        ms = total / images
        rate = f", {flops[component] / ms / 1e9:.1f} TFLOP/s" if ms > 0 and component in flops else ""
        parts.append(f"{component} {ms:.2f} ms/image ({100 * ms / wall_ms:.0f}%{rate})")
    rest = wall_ms - sum(totals.values()) / images
    return (
        f"{wall_ms:.2f} ms/image: "
        + ", ".join(parts)
        + f"; everything else {rest:.2f} ms/image ({100 * rest / wall_ms:.0f}%)"
    )
