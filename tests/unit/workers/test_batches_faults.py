"""A row that makes the pipeline raise fails alone; a GPU out-of-memory halves the batch.

Neither fault can be made for real on this CPU machine, so both are injected through
turbobatch/faults.py (TURBOBATCH_TEST_FAULTS) into the real tiny pipeline.
"""

import json

import pytest

from tests.conftest import write_parquet
from tests.helpers import read_metadata, read_tar_images
from tests.unit.workers.test_actor import resolved_spec
from turbobatch import faults
from turbobatch.output.shard import Shard
from turbobatch.workers.actor import PipelineFailedEveryRow, RenderWorker

PROMPTS = [f"prompt {i}" for i in range(7)]


@pytest.fixture
def inject(monkeypatch):
    def set_faults(**values):
        monkeypatch.setenv(faults.ENV, json.dumps(values))
        faults._faults.cache_clear()

    yield set_faults
    faults._faults.cache_clear()


def render(tmp_path, prompts, batch_size=4, **spec):
    path = write_parquet(tmp_path / "in" / "p.parquet", {"prompt": prompts})
    worker = RenderWorker(resolved_spec(tmp_path / "out", shard_size=len(prompts), batch_size=batch_size, **spec))
    marker = worker.render_shard(Shard(0, f"file://{path}", 0, len(prompts), 0, 1))
    return worker, marker, read_metadata(tmp_path / "out")


def test_a_row_that_raises_fails_alone(tmp_path, inject, tiny_model_dir):
    prompts = list(PROMPTS)
    prompts[2] = "prompt 2 BOOM"
    inject(raise_on_prompt="BOOM")
    _, marker, rows = render(tmp_path, prompts)
    assert (marker["ok"], marker["error"]) == (6, 1)
    bad = rows[2]
    assert bad["status"] == "error" and bad["image"] is None
    assert bad["error"].startswith("pipeline raised RuntimeError: injected") and "BOOM" in bad["error"]
    # Its batch-mates were rendered one by one; the next batch again at full size.
    assert [r["batch_size"] for r in rows] == [1, 1, None, 1, 3, 3, 3]
    assert sorted(read_tar_images(tmp_path / "out")) == [r["key"] for r in rows if r["status"] == "ok"]


def test_out_of_memory_halves_the_batch_and_keeps_the_size_that_fits(tmp_path, inject, tiny_model_dir):
    inject(oom_above_batch=2)
    worker, marker, rows = render(tmp_path, PROMPTS, batch_size=8)
    assert (marker["ok"], marker["error"]) == (7, 0)
    assert all(r["batch_size"] <= 2 for r in rows)
    assert worker.renderer.rows_per_call == 2


def test_out_of_memory_at_one_row_fails_the_shard(tmp_path, inject, tiny_model_dir):
    import torch

    inject(oom_above_batch=0)
    with pytest.raises(torch.OutOfMemoryError):
        render(tmp_path, PROMPTS[:3])
    assert not (tmp_path / "out" / "_done").exists()


def test_every_row_raising_fails_the_shard_instead_of_committing_errors(tmp_path, inject, tiny_model_dir):
    inject(raise_on_prompt="prompt")
    with pytest.raises(PipelineFailedEveryRow, match="all 7 rows"):
        render(tmp_path, PROMPTS)
    assert not (tmp_path / "out" / "_done").exists()


def test_unknown_fault_names_are_an_error(inject):
    inject(delay=1)
    with pytest.raises(ValueError, match="unknown fault"):
        faults.before_pipeline_call(["x"])
