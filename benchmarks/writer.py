"""Encode + write throughput of 512x512 images: PNG, JPEG and WebP, one thread and the pool.

Uses the worker's own encoder (workers/sinks/encode.py), output folder (output/storage.py) and pool
size (workers/actor.py ENCODE_THREADS). Random-ish images: smooth gradients plus noise, so PNG
and WebP do real work.

    .venv/bin/python benchmarks/writer.py --images 48
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from turbobatch.output.storage import Folder  # noqa: E402
from turbobatch.spec.job import DEFAULT_QUALITY, IMAGE_EXTENSIONS  # noqa: E402
from turbobatch.workers.actor import ENCODE_THREADS  # noqa: E402
from turbobatch.workers.sinks.encode import encode_image  # noqa: E402


def images(n: int, size: int = 512) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([x, y, (x + y) // 2], axis=-1) * (255 / (2 * size))
    return [np.clip(base + rng.normal(0, 12, base.shape) + i, 0, 255).astype(np.uint8) for i in range(n)]


def throughput(batch: list[np.ndarray], fmt: str, threads: int, out: Folder) -> float:
    quality = DEFAULT_QUALITY.get(fmt)

    def one(i: int) -> None:
        out.write_bytes(f"{fmt}/{threads}/{i}.{IMAGE_EXTENSIONS[fmt]}", encode_image(batch[i], fmt, quality))

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(len(batch))))
    return len(batch) / (time.perf_counter() - started)


def run(n: int) -> None:
    batch = images(n)
    with tempfile.TemporaryDirectory(prefix="tb-writer-") as tmp:
        out = Folder(tmp)
        print(f"{n} images of 512x512, encode + atomic local write; pool = {ENCODE_THREADS} threads")
        for fmt in ("png", "jpeg", "webp"):
            single = throughput(batch, fmt, 1, out)
            pooled = throughput(batch, fmt, ENCODE_THREADS, out)
            print(
                f"{fmt:5s}: {single:7.1f} img/s on 1 thread, {pooled:7.1f} img/s on the pool ({pooled / single:.2f}x)"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    run(parser.parse_args().images)
