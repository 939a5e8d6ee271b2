"""What a --lora-column adapter switch costs, beside a batch's render, on the tiny twin (CPU).

Printed, never asserted (docs/BENCHMARKS.md has the figures). A switch is ``set_adapters`` (or
``disable_lora``) between two batches; the renderer groups rows by LoRA, so a shard pays it once
per LoRA group, not per row. Also: a fused LoRA set against no LoRA (should cost nothing per image).

    python -m benchmarks.lora_switch [--repeats 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    from diffusers import AutoPipelineForText2Image

    from tests.lora_helpers import make_tiny_lora
    from turbobatch.models.lora import LoraSwitch
    from turbobatch.models.tiny import tiny_model_path

    torch.set_num_threads(2)
    root = Path(tempfile.mkdtemp())
    paths = [make_tiny_lora("tiny-sd-turbo", root / n, seed=i) for i, n in enumerate("ab")]
    pipe = AutoPipelineForText2Image.from_pretrained(tiny_model_path("tiny-sd-turbo"))
    pipe.set_progress_bar_config(disable=True)
    for i, path in enumerate(paths):
        pipe.load_lora_weights(str(path.parent), adapter_name=f"lora{i}")
    switch = LoraSwitch(pipe, {"a": ("lora0", 1.0), "b": ("lora1", 0.5)})

    def batch() -> float:
        started = time.perf_counter()
        pipe(["a fox"] * 8, num_inference_steps=1, guidance_scale=0.0, height=64, width=64, output_type="np")
        return time.perf_counter() - started

    batch()  # warm-up
    order = ["a", "b", None] * args.repeats
    switch_s = []
    for name in order:
        started = time.perf_counter()
        switch.activate(name)
        switch_s.append(time.perf_counter() - started)
    render_s = sorted(batch() for _ in range(5))[2]
    median = sorted(switch_s)[len(switch_s) // 2]
    print(f"adapter switch: median {median * 1e3:.2f} ms over {len(order)} switches (set_adapters / disable_lora)")
    print(f"one batch of 8 at 64x64, 1 step, 2 LoRAs loaded: median {render_s * 1e3:.1f} ms")
    print(f"switch / batch: {median / render_s:.3f}")


if __name__ == "__main__":
    main()
