"""resume.done_listing on S3 (moto): a block of 1,000 shard ids whose summary names every planned shard is taken
from the summary, not listed; never when spec.json is absent, the summary lacks a shard, or `verify --repair`
named one of the block's shards."""

from __future__ import annotations

import gzip
import json

import pytest

from tests.conftest import s3_options
from tests.faultproxy import FaultProxy
from turbobatch.jobs.prepare import resume
from turbobatch.output import layout, summary
from turbobatch.output.storage import Folder

PLANNED = 3500  # blocks 0-3 (prefixes 000 to 003); block 3 holds ids 3000-3499


def commit(out: Folder, ids: range | list[int]) -> None:
    """Done markers put through moto's own backend (the server runs in this process): thousands in a second."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    bucket, key, _ = out.fs.split_path(out.root)
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for i in ids:
        backend.put_object(bucket, f"{key}/{layout.done_path(i)}", b'{"shard": %d, "ok": 1, "error": 0}' % i)


def write_summaries(out: Folder, versions: dict[int, str | None]) -> None:
    """Summaries of these markers, as summary.done_markers writes them (docs/OUTPUT.md), without reading each."""
    blocks: dict[int, dict[str, list]] = {}
    for i, version in versions.items():
        blocks.setdefault(i // layout.SUMMARY_BLOCK, {})[str(i)] = [version, {"shard": i, "ok": 1, "error": 0}]
    out.write_many(
        {
            layout.summary_path(b): gzip.compress(json.dumps({"format": summary.FORMAT, "shards": shards}).encode())
            for b, shards in blocks.items()
        }
    )


@pytest.fixture
def output(s3_endpoint, s3_bucket):
    """(folder through a counting proxy, the proxy): spec.json, blocks 0-2 complete, 3000-3099 of block 3."""
    upstream_port = int(s3_endpoint.rsplit(":", 1)[1])
    with FaultProxy(upstream_port) as proxy:
        out = Folder(f"s3://{s3_bucket}/out", s3_options(proxy.url))
        out.write_json(layout.SPEC, {"spec": {}, "fingerprint": {}})
        commit(out, range(3100))
        yield out, proxy


def lists(proxy: FaultProxy, call) -> tuple[object, int]:
    proxy.requests.clear()
    result = call()
    return result, proxy.requests["LIST"]


def test_complete_blocks_come_from_their_summaries_with_the_versions_a_listing_gives(output):
    out, proxy = output
    every, n = lists(proxy, lambda: resume.done_listing(out, PLANNED))
    assert n == 4 + 1 and every.listed == {0, 1, 2, 3}  # no summary yet: prefixes 000-003, then the names after
    write_summaries(out, every.versions)  # as status or the card writes them
    trusted, n = lists(proxy, lambda: resume.done_listing(out, PLANNED))
    assert n == 1 + 1 and trusted.listed == {3}  # block 3 is incomplete: listed, and the names after the plan
    assert trusted.versions == every.versions and sorted(trusted.versions) == list(range(3100))
    assert set(trusted.summaries) == {0, 1, 2, 3}  # handed to summary.done_markers: not read again
    before = resume.done_listing(out, PLANNED, trust_summaries=False)
    assert before.versions == every.versions and before.listed == {0, 1, 2, 3}
    # A marker past the plan is still found (the listing after "003:").
    commit(out, [5000])
    assert 5000 in resume.committed_shards(out, PLANNED)


def test_a_summary_that_lacks_a_planned_shard_is_not_trusted(output):
    out, proxy = output
    versions = resume.done_versions(out, PLANNED)
    write_summaries(out, {i: v for i, v in versions.items() if i != 1234})  # block 1's summary lacks 1234
    listing, n = lists(proxy, lambda: resume.done_listing(out, PLANNED))
    assert listing.listed == {1, 3} and n == 3
    assert sorted(listing.versions) == list(range(3100))


def test_without_spec_json_every_block_is_listed(output):
    out, proxy = output
    write_summaries(out, resume.done_versions(out, PLANNED))
    out.remove_file(layout.SPEC)  # an --overwrite cut short, or not this job's output yet
    listing, n = lists(proxy, lambda: resume.done_listing(out, PLANNED))
    assert listing.listed == {0, 1, 2, 3} and n == 5
    assert resume.removed_markers(out) is None


def test_a_marker_verify_repair_removed_is_never_taken_from_a_summary(output):
    out, proxy = output
    write_summaries(out, resume.done_versions(out, PLANNED))
    # verify --repair names the shard first, then removes its marker; a status running meanwhile may have
    # written a summary that still names it (here: the summary written above).
    resume.record_removed_markers(out, [1500, 1501])
    resume.record_removed_markers(out, [1500])
    out.remove_file(layout.done_path(1500))
    assert resume.removed_markers(out) == {1500, 1501}
    assert out.read_json(layout.SPEC)["fingerprint"] == {}  # the rest of spec.json kept
    listing = resume.done_listing(out, PLANNED)
    assert listing.listed == {1, 3}
    assert 1500 not in listing.versions and 1501 in listing.versions
    assert resume.committed_shards(out, PLANNED) == set(range(3100)) - {1500}
    resume.record_removed_markers(out, [])  # nothing broken: spec.json untouched
    assert resume.removed_markers(out) == {1500, 1501}


def test_skipped_blocks_are_neither_listed_nor_read(output):
    out, proxy = output
    (listing, n) = lists(proxy, lambda: resume.done_listing(out, PLANNED, trust_summaries=False, skip={0, 1}))
    assert listing.listed == {2, 3} and n == 2 + 1 and proxy.requests["GET"] == 0
    assert sorted(listing.versions) == list(range(2000, 3100))


def test_summaries_are_not_used_where_the_folder_is_listed_whole(tmp_path):
    out = Folder(str(tmp_path))
    out.write_json(layout.SPEC, {"spec": {}, "fingerprint": {}})
    out.write_many({layout.done_path(i): b'{"shard": %d, "ok": 1, "error": 0}' % i for i in range(2500)})
    write_summaries(out, resume.done_versions(out, 3000))
    out.remove_file(layout.done_path(10))  # by hand: a local listing sees it at once
    listing = resume.done_listing(out, 3000)
    assert listing.listed == {0, 1, 2} and listing.summaries == {}
    assert sorted(listing.versions) == [i for i in range(2500) if i != 10]


def test_summary_covers_only_when_every_id_has_a_version():
    entries = {0: ("1:a", {}), 1: ("1:b", {}), 2: (None, {})}
    assert summary.covers(entries, range(2))
    assert not summary.covers(entries, range(3))  # no version: cannot be told from an older marker
    assert not summary.covers(entries, range(4))
