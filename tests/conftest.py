"""Shared fixtures: a tiny-model cache, Parquet writers, and one real local Ray per session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    # No test may reach the Hub; an unknown model id must fail at once, not after retries.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TURBOBATCH_CACHE", str(REPO / ".pytest_cache" / "turbobatch"))


def write_parquet(path: Path, columns: dict[str, list[Any]], row_group_size: int | None = None,
                  schema: pa.Schema | None = None) -> Path:  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(columns, schema=schema) if schema else pa.table(columns)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from workers.tiny import tiny_model_path

    return tiny_model_path("tiny-sd-turbo")


@pytest.fixture(scope="session")
def ray_cluster(tiny_model_dir: Path):
    """One local Ray for the whole session (starting one costs ~4 s)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
