"""The summaries of done markers (output/summary.py), written by the driver as each block of shards completes.

The actors hand every done marker back to the driver, so once every planned shard of a block of 1,000
ids is committed the driver writes that block's summary itself: one listing of the block's name prefix
(the markers' versions; the summary names only markers that listing found) and one PUT, on a thread of
its own so the scheduling loop never waits on storage. Why: a summary is what lets the next resume, a
``status`` and the dataset card skip listing and reading a complete block's markers; without one, a
rerun after a run killed before any ``status`` listed all 100,000 markers (50-70 s on moto) and the
card at the end of a run read every marker once (573-657 s on moto, docs/BENCHMARKS.md).

Only where resume trusts summaries (resume.done_listing: object stores listed by prefix, plans of up to
1,000 blocks). A block with a failed shard gets no summary until a later run commits it. A summary is a
cache: any failure to write one is ignored.
"""

from __future__ import annotations

import concurrent.futures
from collections import defaultdict
from typing import Any

from turbobatch.jobs.prepare import resume
from turbobatch.output import layout, summary
from turbobatch.output.storage import Folder


class BlockSummaries:
    """Counts each block's planned shards still to commit; writes its summary when none is left."""

    def __init__(self, out: Folder, planned: int, done: set[int]) -> None:
        self.out = out
        self.prefixes = resume.listing_prefixes(planned)[0]
        self.enabled = bool(self.prefixes) and out.lists_by_prefix and planned <= resume.TRUSTED_UP_TO
        block = layout.SUMMARY_BLOCK
        self.left: dict[int, int] = defaultdict(int)  # block -> planned shards not committed yet
        for shard_id in range(planned) if self.enabled else ():
            if shard_id not in done:
                self.left[shard_id // block] += 1
        self.markers: dict[int, dict[int, dict[str, Any]]] = defaultdict(dict)  # block -> this run's markers
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="turbobatch-summary")
        self._writes: list[concurrent.futures.Future[None]] = []

    def committed(self, shard_id: int, marker: dict[str, Any]) -> None:
        """A shard's done marker is written: keep its summary; a block now complete gets its summary."""
        block = shard_id // layout.SUMMARY_BLOCK
        if not self.enabled or block not in self.left or shard_id in self.markers[block]:
            return  # a shard committed twice (a requeued attempt that also finished) counts once
        self.markers[block][shard_id] = summary.summarize(marker)
        self.left[block] -= 1
        if self.left[block] == 0:
            del self.left[block]
            self._writes.append(self._writer.submit(self._write, block, self.markers.pop(block)))

    def close(self) -> None:
        """Wait for the summaries being written (before the dataset card reads them)."""
        self._writer.shutdown(wait=True)

    def _write(self, block: int, markers: dict[int, dict[str, Any]]) -> None:
        """List the block's markers (their versions), then write its summary: this run's markers from
        memory, earlier runs' from the block's old summary or read (done_markers)."""
        try:
            listed = self.out.list_versions(layout.DONE_DIR, [self.prefixes[block]])
            versions = {
                i: version
                for name, version in listed.items()
                if (i := layout.shard_id_from_marker_name(name)) is not None and i // layout.SUMMARY_BLOCK == block
            }
            summary.done_markers(self.out, versions, fresh=markers)
        except Exception:  # noqa: BLE001 - a cache: readers list and read the markers instead
            pass
