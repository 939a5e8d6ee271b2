"""Staging (workers/staging.py): a shard's prompts encoded first, the text encoder moved off, then
the transformer over the cached embeddings: the same bytes as without it, on a tiny twin on CPU."""

from __future__ import annotations

import numpy as np
import torch

from tests.conftest import write_parquet
from tests.helpers import read_tar_images
from turbobatch.output.shard import Shard
from turbobatch.spec.resolved import ResolvedJob
from turbobatch.workers import staging
from turbobatch.workers.actor import RenderWorker

PROMPTS = ["a red fox", "a lighthouse at dusk on a long and winding coast, oil painting", "", "猫", "x"]


def render(tmp_path, name: str, monkeypatch, stage: str) -> tuple[dict, list[str], RenderWorker]:
    """Images of one shard (batches of 2: a short last one) and the order in which the text encoder
    ("te") and the transformer ("tr") ran."""
    monkeypatch.setenv(staging.STAGE_ENV, stage)
    data = write_parquet(tmp_path / f"{name}.parquet", {"prompt": PROMPTS})
    spec = ResolvedJob(
        input=str(data),
        output=str(tmp_path / name),
        model="tiny-z-image-turbo",
        device="cpu",
        dtype="float32",
        height=32,
        width=32,
        steps=2,
        guidance_scale=0.0,
        batch_size=2,
        shard_size=5,
    )
    worker = RenderWorker(spec)
    order: list[str] = []
    pipe = worker.renderer.pipe
    pipe.text_encoder.register_forward_hook(lambda *_: order.append("te"))
    pipe.transformer.register_forward_hook(lambda *_: order.append("tr"))
    worker.render_shard(Shard(0, f"file://{data}", 0, len(PROMPTS), 0, 9))
    return read_tar_images(tmp_path / name), order, worker


def test_staged_images_are_byte_identical_and_every_prompt_is_encoded_first(tmp_path, monkeypatch, capsys):
    plain, plain_order, _ = render(tmp_path, "plain", monkeypatch, "0")
    staged, staged_order, worker = render(tmp_path, "staged", monkeypatch, "1")
    assert "turbobatch: worker: staging: forced by TURBOBATCH_STAGE=1" in capsys.readouterr().err
    assert len(plain) == len(PROMPTS) and staged.keys() == plain.keys()
    assert all(np.array_equal(staged[k], plain[k]) for k in plain)  # every pixel the same
    assert staged_order == ["te"] * 3 + ["tr"] * 6  # 3 batches encoded, then 3 batches x 2 steps
    assert plain_order[:3] == ["te", "tr", "tr"]  # unstaged: batch by batch
    assert worker.renderer._encoded == {}  # nothing kept between shards


def test_a_card_too_small_for_everything_stages(monkeypatch):
    """Z-Image-Turbo's weights (counted on meta: 20.5 GB in bf16) + the activation reserve against
    the card's free memory: a 24 GB card stages, an 80 GB one does not; CPU and UNet models never."""
    from turbobatch.models.random_weights import build_random_pipeline

    monkeypatch.delenv(staging.STAGE_ENV, raising=False)
    pipe = build_random_pipeline("Tongyi-MAI/Z-Image-Turbo", "meta", torch.bfloat16)
    for free_gib, stages in ((22, True), (79, False)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, f=free_gib: (f * 2**30, 80 * 2**30))
        reason = staging.staging_reason(pipe, "cuda")
        assert bool(reason) is stages, reason
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (22 * 2**30, 24 * 2**30))
    assert "22.0 GiB for the pipeline on this card, 19.1 GiB of weights" in staging.staging_reason(pipe, "cuda")
    assert staging.staging_reason(pipe, "cpu") is None
    monkeypatch.setenv(staging.STAGE_ENV, "0")
    assert staging.staging_reason(pipe, "cuda") is None


def test_embeddings_come_back_bit_for_bit():
    from turbobatch.workers.families.base import Conditioning

    cond = Conditioning([torch.randn(3, 4), torch.randn(5, 4)], {"t": torch.randn(2)}, [False, True], torch.randn(2))
    back = staging.moved(cond, "cpu")
    assert back.truncated == [False, True] and torch.equal(back.embeds[1], cond.embeds[1])
    assert torch.equal(back.added["t"], cond.added["t"]) and torch.equal(back.negative, cond.negative)
