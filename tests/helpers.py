"""Readers for a finished output folder, shared by the worker and end-to-end tests."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image


def read_metadata(out: Path) -> list[dict]:
    rows = []
    for path in sorted((out / "metadata").glob("*.parquet")):
        rows += pq.read_table(path).to_pylist()
    return rows


def read_tar_images(out: Path) -> dict[str, np.ndarray]:
    """key -> decoded uint8 image, over every committed tar."""
    images = {}
    for path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                data = tar.extractfile(member).read()
                if ext == "json":
                    json.loads(data)
                else:
                    images[key] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return images


def plain_diffusers_image(pipe, prompt: str, seed: int, height: int, width: int, steps: int = 1) -> np.ndarray:
    """What a user gets from a plain diffusers call with the row's generator."""
    out = pipe(prompt, num_inference_steps=steps, guidance_scale=0.0, height=height, width=width,
               generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images  # fmt: skip
    return (out[0] * 255).round().astype(np.uint8)


def corrupt_parquet(path: Path, prompts: list[str]) -> Path:
    """A Parquet file whose footer is valid (planning succeeds) but whose data page is not
    (the worker's read raises): the shard fails, the job does not."""
    pq.write_table(pa.table({"prompt": prompts}), path, use_dictionary=False, compression="snappy")
    column = pq.ParquetFile(path).metadata.row_group(0).column(0)
    with path.open("r+b") as f:
        f.seek(column.data_page_offset + column.total_compressed_size // 2)
        f.write(b"\xff" * (column.total_compressed_size // 4))
    return path
