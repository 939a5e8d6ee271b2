"""Which failures are retried: real exceptions from the real libraries, classified."""

from __future__ import annotations

import socket

import pytest
from botocore.exceptions import ClientError

from tests.helpers import corrupt_parquet
from turbobatch.errors import InfrastructureError, is_retryable
from turbobatch.jobs.run.retry import backoff_s
from turbobatch.output.storage import Folder


def client_error(code: str, status: int) -> ClientError:
    response = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "PutObject")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_s3_endpoint_is_retryable():
    options = {
        "key": "k",
        "secret": "s",
        "config_kwargs": {"retries": {"max_attempts": 1}},
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{closed_port()}", "region_name": "us-east-1"},
    }
    out = Folder("s3://bucket/out", options)  # as the worker writes
    with pytest.raises(Exception, match="Could not connect to the endpoint") as caught:
        out.write_bytes("metadata/000000.parquet", b"data")
    assert is_retryable(caught.value), repr(caught.value)


@pytest.mark.parametrize("code, status", [("SlowDown", 503), ("ServiceUnavailable", 503), ("InternalError", 500)])
def test_server_errors_are_retryable_also_when_s3fs_wraps_them(code, status):
    from s3fs.errors import translate_boto_error

    assert is_retryable(client_error(code, status))
    assert is_retryable(translate_boto_error(client_error(code, status)))  # OSError, the ClientError as cause


@pytest.mark.parametrize("code, status", [("AccessDenied", 403), ("NoSuchKey", 404), ("NoSuchBucket", 404)])
def test_client_errors_are_not_retryable(code, status):
    from s3fs.errors import translate_boto_error

    assert not is_retryable(client_error(code, status))
    assert not is_retryable(translate_boto_error(client_error(code, status)))


def test_corrupt_data_and_bugs_are_not_retryable(tmp_path):
    import pyarrow.parquet as pq

    path = corrupt_parquet(tmp_path / "bad.parquet", [f"p{i}" for i in range(10)])
    with pytest.raises(OSError) as caught:  # pyarrow reports a corrupt page as an OSError
        pq.read_table(path)
    assert not is_retryable(caught.value)
    assert not is_retryable(ValueError("a bug"))
    assert not is_retryable(FileNotFoundError("input vanished"))


def test_an_error_raised_while_handling_a_network_error_is_not_one():
    try:
        try:
            raise ConnectionResetError("reset")
        except ConnectionResetError:
            raise KeyError("bug in the handler")  # noqa: B904 - the implicit context is the point
    except KeyError as e:
        assert not is_retryable(e)


def test_the_worker_wrapper_and_explicit_causes_are_followed():
    wrapped = InfrastructureError("OSError: timeout")
    assert is_retryable(wrapped)
    try:
        raise RuntimeError("commit failed") from TimeoutError("read timed out")
    except RuntimeError as e:
        assert is_retryable(e)


def test_backoff_doubles_and_is_capped():
    assert [backoff_s(n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert backoff_s(30) == 60.0
