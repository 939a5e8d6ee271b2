"""Folder and input scanning against moto's real S3 server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, s3_options
from tests.faultproxy import FaultProxy
from tests.helpers import wait_for
from turbobatch.errors import JobError
from turbobatch.jobs.prepare import resume
from turbobatch.jobs.prepare.inputs import scan_inputs
from turbobatch.output import layout
from turbobatch.output.storage import Folder


def test_atomic_writes_and_one_listing(s3_endpoint, s3_bucket):
    out = Folder(f"s3://{s3_bucket}/out", s3_options(s3_endpoint))
    with pytest.raises(RuntimeError), out.atomic_writer("shards/000000.tar") as f:
        f.write(b"torn")
        raise RuntimeError("killed")
    assert not out.exists("shards/000000.tar")
    for i in range(3):
        out.write_json(f"_done/{i:06d}.json", {"shard": i})
    assert out.list_names("_done") == ["000000.json", "000001.json", "000002.json"]
    assert resume.committed_shards(out) == {0, 1, 2}
    # Another process deletes a marker: the next listing must see it (no stale cache).
    other = Folder(f"s3://{s3_bucket}/out", s3_options(s3_endpoint))
    other.fs.rm(other.path("_done/000001.json"))
    assert resume.committed_shards(out) == {0, 2}


def test_missing_bucket_is_named_for_output_and_input(s3_endpoint):
    with pytest.raises(
        JobError, match="output: cannot write to s3://no-such-bucket/out: bucket 'no-such-bucket' does not exist"
    ):
        resume.check_writable(Folder("s3://no-such-bucket/out", s3_options(s3_endpoint)))
    with pytest.raises(JobError, match="input: bucket 'no-such-bucket' does not exist"):
        scan_inputs("s3://no-such-bucket/prompts/", s3_options(s3_endpoint))


def test_unreachable_endpoint_is_named_within_seconds():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(JobError, match=f"endpoint unreachable for s3://b/out: http://127.0.0.1:{port}"):
        resume.check_writable(Folder("s3://b/out", s3_options(f"http://127.0.0.1:{port}")))
    with pytest.raises(JobError, match="input: endpoint unreachable"):
        scan_inputs("s3://b/in.parquet", s3_options(f"http://127.0.0.1:{port}"))
    assert time.monotonic() - started < 20


@pytest.fixture(scope="module")
def s3_with_auth():
    """A second moto server that checks credentials (INITIAL_NO_AUTH_ACTION_COUNT=0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_access_denied_is_named(s3_with_auth):
    with pytest.raises(JobError, match="output: cannot write to s3://b/out: access denied to s3://b/out"):
        resume.check_writable(Folder("s3://b/out", s3_options(s3_with_auth)))
    with pytest.raises(JobError, match="input: access denied to s3://b/in/"):
        scan_inputs("s3://b/in/", s3_options(s3_with_auth))


UPLOAD_WRITER = """
import os, sys, json
from turbobatch.output.storage import Folder
out = Folder(sys.argv[1], json.loads(sys.argv[2]))
out.write_bytes("shards/000003.tar", os.urandom(101 * 2**20))  # over 2 x 50 MiB: s3fs uploads in parts
"""


def test_a_writer_killed_mid_upload_leaves_an_upload_that_tidy_aborts(s3_endpoint, s3_bucket):
    """A real process is SIGKILLed while its tar's parts are in flight (held by the proxy): the
    upload stays behind, invisible but stored, until the next run's tidy aborts it."""
    import s3fs

    client = s3fs.S3FileSystem(**s3_options(s3_endpoint))
    client.pipe(f"{s3_bucket}/notes/draft.bin", b"x")  # not ours: a user's file next to the output
    upstream_port = int(s3_endpoint.rsplit(":", 1)[1])
    with FaultProxy(upstream_port) as proxy:
        proxy.hold("PUT_PART")
        writer = subprocess.Popen(
            [sys.executable, "-c", UPLOAD_WRITER, f"s3://{s3_bucket}/out", json.dumps(s3_options(proxy.url))], cwd=REPO
        )
        try:
            wait_for(lambda: proxy.faults["held"] >= 1, timeout=60, what="a part upload in flight")
        finally:
            writer.kill()
            writer.wait()
            proxy.release()
    uploads = client.call_s3("list_multipart_uploads", Bucket=s3_bucket).get("Uploads", [])
    assert [u["Key"] for u in uploads] == ["out/shards/000003.tar"]
    # An upload outside turbobatch's folders is not ours to abort.
    foreign = client.call_s3("create_multipart_upload", Bucket=s3_bucket, Key="out/notes/big.bin")
    out = Folder(f"s3://{s3_bucket}/out", s3_options(s3_endpoint))
    assert not out.exists("shards/000003.tar")
    assert resume.remove_temp_leftovers(out) == 1
    uploads = client.call_s3("list_multipart_uploads", Bucket=s3_bucket).get("Uploads", [])
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [("out/notes/big.bin", foreign["UploadId"])]
    assert resume.remove_temp_leftovers(out) == 0


def test_a_store_that_refuses_the_upload_listing_only_warns(s3_endpoint, s3_bucket, capsys):
    """Clearing uploads is housekeeping: a store that answers it with an error must not fail a run."""
    upstream_port = int(s3_endpoint.rsplit(":", 1)[1])
    with FaultProxy(upstream_port, unavailable=("?uploads", 100)) as proxy:
        options = {**s3_options(proxy.url), "config_kwargs": {"retries": {"max_attempts": 1}}}
        out = Folder(f"s3://{s3_bucket}/out", options)
        assert resume.remove_temp_leftovers(out) == 0
    assert proxy.faults["unavailable"] >= 1
    assert "warning: cannot clear incomplete uploads under s3://" in capsys.readouterr().err


def test_overwrite_on_s3_removes_only_the_layouts_objects(s3_endpoint, s3_bucket, capsys):
    from tests.unit.jobs.prepare.test_resume import FOREIGN, OURS, fill, prepare

    out = Folder(f"s3://{s3_bucket}/out", s3_options(s3_endpoint))
    prepare(out)
    fill(out, OURS + FOREIGN)
    assert prepare(out, steps=2, overwrite=True) == set()
    assert (
        f"--overwrite: removed 2 done markers, 1 failed marker, 2 metadata files, 2 tar shards, 1 data file, "
        f"2 image files, 1 temp file, _job/ from s3://{s3_bucket}/out; kept 7 file(s)" in capsys.readouterr().err
    )
    out.fs.invalidate_cache()
    left = sorted(path.split("/", 2)[2] for path in out.fs.find(s3_bucket))
    assert left == sorted([*FOREIGN, layout.PLAN, layout.SPEC])


def test_a_listing_split_by_prefix_finds_exactly_what_one_listing_finds(s3_endpoint, s3_bucket):
    """resume.done_versions with the plan's shard count lists _done/ by name prefix (1,000 ids each) and the
    names after the plan's, concurrently: the same markers and versions as one listing, ids past the plan too."""
    upstream_port = int(s3_endpoint.rsplit(":", 1)[1])
    ids = [0, 999, 1000, 1500, 2999, 50_000, 99_999]  # several prefixes of a plan of 100,000 shards
    past = [100_000, 150_000, 999_999, 1_000_000, 1_234_567]  # another plan's: after the plan, 7 digits too
    strays = ["notes.txt", "1.json", "01.json", "!.json", "zz.json", "000123.json.tmp-x", "sub/000007.json"]
    with FaultProxy(upstream_port) as proxy:
        out = Folder(f"s3://{s3_bucket}/out", s3_options(proxy.url))
        assert resume.done_versions(out, 100_000) == resume.done_versions(out) == {}  # no _done/ yet
        for i in ids + past:
            out.write_json(layout.done_path(i), {"shard": i})
        out.fs.pipe({out.path(f"{layout.DONE_DIR}/{name}"): b"x" for name in strays})
        proxy.requests.clear()
        one = resume.done_versions(out)
        assert proxy.requests["LIST"] == 1
        proxy.requests.clear()
        split = resume.done_versions(out, 100_000)
        assert proxy.requests["LIST"] == 100 + 1  # prefixes 000 to 099, then the names after "099:"
        proxy.requests.clear()
        out.read_json_many([layout.done_path(i) for i in ids])  # no listing cached: still one GET each, no HEAD
        assert dict(proxy.requests) == {"GET": len(ids)}
    assert split == one and sorted(one) == ids + past
    assert resume.committed_shards(out, 100_000) == set(ids + past)
    before = split[1500]
    out.write_json(layout.done_path(1500), {"shard": 1500, "redone": True})
    assert resume.done_versions(out, 100_000)[1500] != before
