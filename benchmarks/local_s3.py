"""moto's S3 server on 127.0.0.1 with one bucket, for the benchmarks that talk S3."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import boto3
from moto.server import ThreadedMotoServer


@contextlib.contextmanager
def local_s3(bucket: str) -> Iterator[tuple[int, Any]]:
    """Yields (port, boto3 client) with ``bucket`` created; stops the server on exit."""
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        port = server.get_host_and_port()[1]
        client = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id="k",
            aws_secret_access_key="s",
        )
        client.create_bucket(Bucket=bucket)
        yield port, client
    finally:
        server.stop()


def options(endpoint: str) -> dict[str, Any]:
    return {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
