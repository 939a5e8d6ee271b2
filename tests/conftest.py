"""Shared fixtures: a tiny-model cache, Parquet writers, and one real local Ray per session."""

from __future__ import annotations

import logging
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


def write_parquet(
    path: Path, columns: dict[str, list[Any]], row_group_size: int | None = None, schema: pa.Schema | None = None
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(columns, schema=schema) if schema else pa.table(columns)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from turbobatch.models.tiny import tiny_model_path

    return tiny_model_path("tiny-sd-turbo")


@pytest.fixture(scope="session")
def tiny_fp16_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-sd-turbo with both plain and fp16 weight files (``*.fp16.safetensors``)."""
    import shutil

    from tests.helpers import add_fp16_files

    folder = tmp_path_factory.mktemp("models") / "tiny-sd-turbo-fp16"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "READY").unlink()
    return add_fp16_files(folder)


@pytest.fixture(scope="session")
def ray_cluster(tiny_model_dir: Path):
    """One local Ray for the whole session (starting one costs ~4 s)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


# -- S3: moto's real S3 HTTP server on 127.0.0.1 ------------------------------------------
S3_SECRET = "tb-test-secret-7f3a9c"  # must never appear in any output or log


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def s3_options(endpoint: str) -> dict[str, Any]:
    return {
        "key": "tb-test-key",
        "secret": S3_SECRET,
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }


@pytest.fixture
def s3_bucket(s3_endpoint: str, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket for one test."""
    import boto3

    name = "tb-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="tb-test-key",
        aws_secret_access_key=S3_SECRET,
    )
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def no_actors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad jobs must stop before any actor starts: starting the actor pool fails the test."""
    from turbobatch.jobs.run import pool

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an actor was started for a bad job")

    monkeypatch.setattr(pool.ActorPool, "start", forbidden)
