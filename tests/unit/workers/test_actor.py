"""RenderWorker without Ray: rendering, writing and determinism of one shard."""

import dataclasses
import json

import pytest

from tests.conftest import write_parquet
from tests.helpers import assert_within_one_level, plain_diffusers_image, read_metadata, read_tar_images
from turbobatch.output import layout
from turbobatch.output.shard import Shard
from turbobatch.spec.resolved import ResolvedJob
from turbobatch.workers.actor import RenderWorker

PROMPTS = ["a red fox", "", "日本の桜 🎨", None, "long " * 50, "a lighthouse at dusk"]


def resolved_spec(out, **kw) -> ResolvedJob:
    values = dict(
        input="unused",
        output=str(out),
        model="tiny-sd-turbo",
        device="cpu",
        dtype="float32",
        height=64,
        width=64,
        shard_size=len(PROMPTS),
    )
    values.update(kw)
    return ResolvedJob(**values)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    return write_parquet(tmp_path_factory.mktemp("in") / "p.parquet", {"prompt": PROMPTS}, row_group_size=4)


def shard_of(path, start=0, end=None, shard_id=0) -> Shard:
    end = len(PROMPTS) if end is None else end
    return Shard(shard_id, f"file://{path}", start, end, start, 9)


def test_shard_is_committed_with_done_marker_last(tmp_path, prompts_file, tiny_model_dir):
    worker = RenderWorker(resolved_spec(tmp_path))
    marker = worker.render_shard(shard_of(prompts_file))
    assert (marker["rows"], marker["ok"], marker["error"]) == (6, 5, 1)
    assert json.loads((tmp_path / layout.done_path(0)).read_text()) == marker
    done_mtime = (tmp_path / layout.done_path(0)).stat().st_mtime_ns
    for rel in marker["files"]:
        assert (tmp_path / rel).stat().st_mtime_ns <= done_mtime
    rows = read_metadata(tmp_path)
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "error", "ok", "ok"]
    assert rows[3]["error"] == "prompt is null" and rows[3]["image"] is None
    assert [r["truncated"] for r in rows if r["status"] == "ok"] == [False, False, False, True, False]
    images = read_tar_images(tmp_path)
    assert sorted(images) == [r["key"] for r in rows if r["status"] == "ok"]
    assert all(img.shape == (64, 64, 3) for img in images.values())
    t = marker["timings_s"]  # where the shard's time went
    assert set(t) == {
        "read",
        "render",
        "pipeline",
        "writer_wait",
        "device_wait",
        "device_idle_before",
        "commit",
        "total",
    }
    assert 0 < t["pipeline"] <= t["render"] <= t["total"]
    assert t["read"] + t["device_wait"] + t["render"] + t["commit"] <= t["total"] + 1e-3
    assert t["device_idle_before"] == 0  # the worker's first shard


def test_images_are_within_one_level_of_a_plain_diffusers_call(tmp_path, prompts_file, tiny_model_dir):
    from diffusers import AutoPipelineForText2Image

    worker = RenderWorker(resolved_spec(tmp_path, height=48, width=40, seed=123))
    worker.render_shard(shard_of(prompts_file))
    images = read_tar_images(tmp_path)
    pipe = AutoPipelineForText2Image.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)
    for row in read_metadata(tmp_path):
        if row["status"] == "ok":
            expected = plain_diffusers_image(pipe, row["prompt"], row["seed"], 48, 40)
            assert_within_one_level(images[row["key"]], expected, row["key"])


def test_a_rerun_gives_the_same_bytes_and_other_batches_the_same_images(tmp_path, prompts_file, tiny_model_dir):
    for run in ("a", "b"):  # the same job twice, by two workers: byte for byte (resume stays exact)
        RenderWorker(resolved_spec(tmp_path / run, batch_size=4)).render_shard(shard_of(prompts_file))
    digests = [{r["key"]: r["sha256"] for r in read_metadata(tmp_path / d)} for d in ("a", "b")]
    assert digests[0] == digests[1] and len(digests[0]) >= 4
    split = RenderWorker(resolved_spec(tmp_path / "c", batch_size=1, shard_size=4))  # other batches, other shards
    split.render_shard(shard_of(prompts_file, 0, 4, shard_id=0))
    split.render_shard(shard_of(prompts_file, 4, 6, shard_id=1))
    batched, single = read_tar_images(tmp_path / "a"), read_tar_images(tmp_path / "c")
    assert sorted(batched) == sorted(single)
    for key in batched:
        assert_within_one_level(batched[key], single[key], key)


def test_files_format_and_jpeg(tmp_path, prompts_file, tiny_model_dir):
    worker = RenderWorker(resolved_spec(tmp_path, format="files", image_format="jpeg", quality=80))
    marker = worker.render_shard(shard_of(prompts_file))
    assert not (tmp_path / "shards").exists()
    written = sorted(p.name for p in (tmp_path / "images" / "000000").iterdir())
    assert written == [f"00000000{i}.jpg" for i in (0, 1, 2, 4, 5)]
    assert marker["image_bytes"] == sum((tmp_path / "images" / "000000" / n).stat().st_size for n in written)
    assert read_metadata(tmp_path)[0]["image"] == "images/000000/000000000.jpg"


def test_worker_refuses_an_unresolved_spec(tmp_path):
    with pytest.raises(ValueError, match="resolved by the driver"):
        RenderWorker(dataclasses.replace(resolved_spec(tmp_path), device=None))


def test_two_shards_at_once_take_turns_on_the_device_and_overlap_commit(tmp_path, prompts_file, monkeypatch):
    """As the Ray actor runs them (two in flight): one shard renders while the other commits, the
    pipeline is never entered by both, and the bytes are those of shards rendered one by one."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from turbobatch.workers import writer as writer_module

    events: list[tuple[str, int]] = []
    inside = threading.Semaphore(1)
    worker = RenderWorker(resolved_spec(tmp_path / "together", shard_size=3))
    real_render, real_commit = worker.renderer.render, writer_module.ShardWriter.commit

    def render(rows):
        assert inside.acquire(blocking=False), "two shards inside the pipeline at once"
        try:
            events.append(("render", rows[0].global_index // 3))
            yield from real_render(rows)
        finally:
            inside.release()

    def slow_commit(self, timings, started, **extra):
        events.append(("commit starts", self.shard.shard_id))
        time.sleep(1.0)  # an upload: the other shard must not wait for it to render
        marker = real_commit(self, timings, started, **extra)
        events.append(("commit ends", self.shard.shard_id))
        return marker

    monkeypatch.setattr(worker.renderer, "render", render)
    monkeypatch.setattr(writer_module.ShardWriter, "commit", slow_commit)
    with ThreadPoolExecutor(2) as pool:
        markers = list(
            pool.map(worker.render_shard, [shard_of(prompts_file, 0, 3, 0), shard_of(prompts_file, 3, 6, 1)])
        )
    first, second = (events[0][1], 1 - events[0][1])
    assert events.index(("render", second)) < events.index(("commit ends", first)), events
    assert [m["rows"] for m in markers] == [3, 3]
    monkeypatch.undo()

    alone = RenderWorker(resolved_spec(tmp_path / "alone", shard_size=3))
    alone.render_shard(shard_of(prompts_file, 0, 3, 0))
    alone.render_shard(shard_of(prompts_file, 3, 6, 1))
    digests = [{r["key"]: r["sha256"] for r in read_metadata(tmp_path / d)} for d in ("together", "alone")]
    assert digests[0] == digests[1]


def test_without_ray_the_marker_has_no_node_id_and_this_process(tmp_path, prompts_file, tiny_model_dir):
    """RenderWorker is also used without Ray (tests, the GPU machine): it must not need Ray to
    fill its done marker. In a fresh process with no Ray imported: node_id None, its own pid."""
    import os
    import socket
    import subprocess
    import sys

    from tests.conftest import REPO

    code = (
        f"import json, os, sys; from turbobatch.output.shard import Shard; from tests.unit.workers.test_actor import resolved_spec; "
        f"from turbobatch.workers.actor import RenderWorker; w = RenderWorker(resolved_spec({str(tmp_path)!r})); "
        f"m = w.render_shard(Shard(0, 'file://{prompts_file}', 0, 2, 0, 9)); "
        f"print(json.dumps([m['worker'], m['node_id'], m['pid'], os.getpid(), w.ready(), 'ray' in sys.modules, "
        f"m['device_kind'], w.metrics is None]))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    host, node_id, pid, own_pid, ready, ray_imported, kind, no_metrics = json.loads(
        result.stdout.strip().splitlines()[-1]
    )
    assert (host, node_id, pid) == (socket.gethostname(), None, own_pid) and not ray_imported
    assert ready == {"host": host, "node_id": None, "pid": own_pid, "device": "cpu", "device_kind": "cpu"}
    assert kind == "cpu" and no_metrics  # no Ray, no metrics: ray.util.metrics is never imported


def test_the_first_marker_records_how_long_the_worker_took_to_start(tmp_path, prompts_file, tiny_model_dir):
    worker = RenderWorker(resolved_spec(tmp_path, shard_size=3))
    first = worker.render_shard(shard_of(prompts_file, 0, 3, 0))
    second = worker.render_shard(shard_of(prompts_file, 3, 6, 1))
    assert set(first["startup_s"]) == {"fetch", "load", "first_batch"}
    assert first["startup_s"]["load"] > 0 and first["startup_s"]["first_batch"] > 0
    assert first["model_fetch"] == []  # a spec the driver did not resolve: the tiny model loads by name
    assert "startup_s" not in second and "model_fetch" not in second  # the worker's first shard only
