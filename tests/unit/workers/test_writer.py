"""ShardWriter on its own: every image queued before commit is in the shard, in row order."""

import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tests.helpers import read_metadata, read_tar_images
from tests.unit.workers.test_actor import resolved_spec
from turbobatch.output.shard import Shard
from turbobatch.output.storage import Folder
from turbobatch.workers import writer as writer_module
from turbobatch.workers.batches import Rendered
from turbobatch.workers.rows import Row
from turbobatch.workers.sinks import tar as sinks


def test_commit_waits_for_every_slow_encode(tmp_path, monkeypatch):
    real_encode = sinks.encode_image

    def slow_encode(*args):
        time.sleep(0.05)
        return real_encode(*args)

    monkeypatch.setattr(sinks, "encode_image", slow_encode)
    spec = resolved_spec(tmp_path, shard_size=6)
    shard = Shard(0, "unused", 0, 6, 0, 1)
    rows = [Row(i, str(i), f"p{i}", None, i) for i in range(6)]
    image = np.zeros((8, 8, 3), np.uint8)
    with ThreadPoolExecutor(1) as pool:
        with writer_module.ShardWriter(Folder(str(tmp_path)), shard, spec, pool, max_pending=4) as writer:
            for row in rows:
                writer.add_image(Rendered(row, image, 1.0, False))
            marker = writer.commit({}, time.perf_counter())
    assert marker["ok"] == 6
    # 6 encodes of 50 ms on 1 thread, at most 4 pending: add_image had to wait for the first ones.
    assert writer.wait_s >= 0.05 and set(marker["timings_s"]) == {"commit", "total"}
    assert sorted(read_tar_images(tmp_path)) == [str(i) for i in range(6)]
    assert all(r["sha256"] for r in read_metadata(tmp_path))
    # Without an origin (no actor around it): this host and process, no Ray node.
    assert (marker["worker"], marker["node_id"], marker["pid"]) == (socket.gethostname(), None, os.getpid())


def test_the_done_marker_records_who_rendered_the_shard(tmp_path):
    spec = resolved_spec(tmp_path, shard_size=1)
    origin = {"worker": "gpu-node-7", "node_id": "ab" * 28, "pid": 4242}
    with ThreadPoolExecutor(1) as pool:
        with writer_module.ShardWriter(
            Folder(str(tmp_path)), Shard(3, "unused", 0, 1, 0, 1), spec, pool, max_pending=4, origin=origin
        ) as writer:
            writer.add_image(Rendered(Row(0, "k", "p", None, 0), np.zeros((8, 8, 3), np.uint8), 1.0, False))
            marker = writer.commit({}, time.perf_counter())
    assert {k: marker[k] for k in origin} == origin
    assert json.loads((tmp_path / "_done" / "000003.json").read_text())["node_id"] == "ab" * 28
