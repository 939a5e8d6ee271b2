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


class S3Process:
    """moto's S3 server and the counting proxy (tests/faultproxy.py) in a child process.

    The store then has its own interpreter, as S3 is another machine: in one process, moto, the proxy
    and the client under test share one GIL. ``fill`` writes objects through moto's own backend, in
    the child: 100,000 done markers take seconds there, against 834 s of s3fs PUTs (measured, loaded
    machine). Requests of the client go through the proxy (``url``), counted by S3 operation.
    """

    def __init__(self, bucket: str) -> None:
        import multiprocessing

        self.bucket = bucket
        self._conn, child = multiprocessing.get_context("spawn").Pipe()
        self._process = multiprocessing.get_context("spawn").Process(target=_serve, args=(child, bucket), daemon=True)

    def __enter__(self) -> S3Process:
        self._process.start()
        self.url = self._conn.recv()
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.send(("stop", ()))
        self._process.join(30)

    def _call(self, command: str, *args: Any) -> Any:
        self._conn.send((command, args))
        answer = self._conn.recv()
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def fill(self, make: Any, *args: Any) -> int:
        """Put every (key, bytes) that the module-level generator ``make(*args)`` yields; returns how many."""
        return self._call("fill", make, args)

    def requests(self) -> dict[str, int]:
        """Requests forwarded since the last ``reset``, by S3 operation (LIST, GET, HEAD, PUT, ...)."""
        return self._call("requests")

    def reset(self) -> None:
        self._call("reset")


def _serve(conn: Any, bucket: str) -> None:
    """The child: serve until told to stop; answer fill / requests / reset."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    from tests.faultproxy import FaultProxy

    with local_s3(bucket) as (port, _), FaultProxy(port) as proxy:
        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        conn.send(proxy.url)
        while True:
            command, args = conn.recv()
            try:
                if command == "stop":
                    return
                if command == "fill":
                    make, make_args = args
                    conn.send(sum(backend.put_object(bucket, key, data) is not None for key, data in make(*make_args)))
                elif command == "requests":
                    conn.send(dict(proxy.requests))
                elif command == "reset":
                    proxy.requests.clear()
                    conn.send(None)
            except Exception as e:  # noqa: BLE001 - handed to the parent
                conn.send(e)
