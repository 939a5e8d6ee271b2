"""The driver writes a block's summary once every planned shard of the block is committed (moto S3), so that
the next resume takes the block from its summary without listing it, and no marker of this run is read."""

from __future__ import annotations

import json

import pytest

from tests.conftest import s3_options
from tests.faultproxy import FaultProxy
from turbobatch.jobs.prepare import resume
from turbobatch.jobs.run.block_summaries import BlockSummaries
from turbobatch.output import layout, summary
from turbobatch.output.storage import Folder

PLANNED = 2500  # blocks 0, 1 and 2 (ids 2000-2499)


def marker(i: int) -> dict:
    return {"shard": i, "ok": 3, "error": 0, "spec_hash": "h", "files": {"a.tar": {"bytes": 9, "sha256": "x"}}}


def commit(out: Folder, ids) -> list[dict]:
    """Done markers as the actors write them; returns them, as the actors hand them to the driver."""
    markers = [marker(i) for i in ids]
    out.write_many({layout.done_path(m["shard"]): json.dumps(m).encode() for m in markers})
    return markers


@pytest.fixture
def output(s3_endpoint, s3_bucket):
    upstream_port = int(s3_endpoint.rsplit(":", 1)[1])
    with FaultProxy(upstream_port) as proxy:
        out = Folder(f"s3://{s3_bucket}/out", s3_options(proxy.url))
        out.write_json(layout.SPEC, {"spec": {}, "fingerprint": {}})
        yield out, proxy


def test_a_complete_block_gets_its_summary_from_the_markers_in_memory(output):
    out, proxy = output
    before = commit(out, range(0, 400))  # an earlier run's: read once, from the store
    summaries = BlockSummaries(out, PLANNED, done=set(range(400)))
    now = commit(out, range(400, 1000)) + commit(out, range(1000, 1999))  # block 1 lacks shard 1999
    proxy.requests.clear()
    for m in now:
        summaries.committed(m["shard"], m)
    summaries.close()
    assert proxy.requests["GET"] == 1 + len(before)  # block 0's old summary (absent), then the earlier markers
    stored = summary.read_blocks(out, [0, 1])
    assert sorted(stored[0]) == list(range(1000)) and stored[1] == {}  # block 1 is not complete
    assert stored[0][500][1] == summary.summarize(marker(500))  # the file checksums are not kept
    listing = resume.done_listing(out, PLANNED)
    assert 0 not in listing.listed and {1, 2} <= listing.listed  # the next resume does not list block 0
    assert set(listing.versions) == set(range(1999))


def test_nothing_is_written_where_resume_lists_everything(tmp_path):
    out = Folder(str(tmp_path))  # a local disk: one listing of _done/ is fast, no summary is trusted there
    summaries = BlockSummaries(out, PLANNED, done=set())
    for m in commit(out, range(1000)):
        summaries.committed(m["shard"], m)
    summaries.close()
    assert not summaries.enabled and not out.exists(layout.summary_path(0))


def test_a_shard_committed_twice_counts_once(output):
    out, _ = output
    summaries = BlockSummaries(out, PLANNED, done=set())
    markers = commit(out, range(999))
    for m in markers + markers[:1]:  # a requeued shard whose first attempt also finished
        summaries.committed(m["shard"], m)
    summaries.close()
    assert summary.read_blocks(out, [0])[0] == {}  # shard 999 is still missing
