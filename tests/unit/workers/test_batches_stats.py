"""Per-image stats (nan_count, mean, std) and dhash in the metadata, and the float32 re-decode of
broken float16 decodes decided from those stats, on the real tiny pipelines (CPU: reference ops)."""

from __future__ import annotations

import json
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import write_parquet
from tests.helpers import read_metadata, read_tar_images
from tests.unit.workers.test_actor import resolved_spec
from tests.unit.workers.test_control import plain_pipeline, spec_for
from turbobatch.kernels import reference
from turbobatch.output.shard import Shard
from turbobatch.output.storage import Folder
from turbobatch.workers import decode as decode_module
from turbobatch.workers.actor import RenderWorker
from turbobatch.workers.batches import PipelineRenderer, Rendered
from turbobatch.workers.rows import Row
from turbobatch.workers.writer import ShardWriter

STATS = ("nan_count", "mean", "std", "dhash")
U64 = 0xFFFF_FFFF_FFFF_FFFF


def hex_dhash(image: np.ndarray) -> str:
    return f"{int(reference.dhash64(torch.from_numpy(image.copy())[None])[0]) & U64:016x}"


def plain_decode(pipe: Any, prompt: str, seed: int, height: int, width: int) -> torch.Tensor:
    """The float VAE output a plain diffusers call decodes (NCHW, [-1, 1])."""
    latents = pipe(
        prompt,
        num_inference_steps=1,
        guidance_scale=0.0,
        height=height,
        width=width,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="latent",
    ).images
    with torch.no_grad():
        return pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]


def test_ok_rows_carry_the_stats_and_dhash_of_their_image(tmp_path, tiny_model_dir):
    from diffusers import AutoPipelineForText2Image

    data = write_parquet(tmp_path / "p.parquet", {"prompt": ["a red fox", None, "a lighthouse at dusk"]})
    out = tmp_path / "out"
    RenderWorker(resolved_spec(out, height=48, width=40, shard_size=3, seed=7)).render_shard(
        Shard(0, f"file://{data}", 0, 3, 0, 1)
    )
    rows, images = read_metadata(out), read_tar_images(out)
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert all(rows[1][c] is None for c in STATS)  # error rows: nulls

    pipe = AutoPipelineForText2Image.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)
    with tarfile.open(next((out / "shards").glob("*.tar"))) as tar:
        members = {m.name: json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")}
    for row in (rows[0], rows[2]):
        expected = reference.image_stats(plain_decode(pipe, row["prompt"], row["seed"], 48, 40))
        image = images[row["key"]]  # the PNG read back from the tar
        assert row["nan_count"] == 0 == int(expected.nan[0] + expected.inf[0])
        assert row["mean"] == pytest.approx(float(expected.mean[0]), abs=1e-6)
        assert row["std"] == pytest.approx(float(expected.std[0]), abs=1e-6)
        assert row["mean"] == pytest.approx(float(image.mean()), abs=1e-6)  # 0..255 units, all channels
        assert row["std"] == pytest.approx(float(image.std()), abs=1e-6)
        assert row["dhash"] == hex_dhash(image) and len(row["dhash"]) == 16
        assert {c: members[f"{row['key']}.json"][c] for c in STATS} == {c: row[c] for c in STATS}


def test_images_below_dhash_size_get_no_hash_but_render(tmp_path, tiny_model_dir):
    data = write_parquet(tmp_path / "p.parquet", {"prompt": ["a"]})
    RenderWorker(resolved_spec(tmp_path, height=16, width=8, shard_size=1)).render_shard(
        Shard(0, f"file://{data}", 0, 1, 0, 1)
    )
    [row] = read_metadata(tmp_path)
    assert row["status"] == "ok" and row["nan_count"] == 0 and row["dhash"] is None


def tamper(renderer: PipelineRenderer, marker: str, change: Any) -> PipelineRenderer:
    """The real renderer, with the latents of prompts holding ``marker`` changed after sampling."""
    sample = renderer.sampler.sample

    def tampered(prompts: list[str], *args: Any) -> Any:
        latents, truncated = sample(prompts, *args)
        for i, prompt in enumerate(prompts):
            if marker in prompt:
                latents[i] = change(latents[i])
        return latents, truncated

    renderer.sampler.sample = tampered
    return renderer


def spy_stats(monkeypatch) -> list[tuple[torch.dtype, list[int]]]:
    """Record (input dtype, NaN+Inf per image) of every postprocess_with_stats call the renderer makes."""
    seen, real = [], decode_module.postprocess_with_stats

    def spy(x: torch.Tensor) -> Any:
        images, stats = real(x)
        seen.append((x.dtype, (stats.nan + stats.inf).tolist()))
        return images, stats

    monkeypatch.setattr(decode_module, "postprocess_with_stats", spy)
    return seen


def render_two(renderer: PipelineRenderer) -> list[Rendered]:
    renderer.rows_per_call = 2  # both rows in one call: the broken one has a batch-mate
    rows = [Row(0, "0", "a red fox", None, 1), Row(1, "1", "a cat BREAK", None, 2)]
    results = list(renderer.render(rows))
    assert all(isinstance(r, Rendered) for r in results), results
    return results


def test_fp16_overflow_is_redecoded_from_the_stats_and_recorded(tmp_path, monkeypatch):
    """A real float16 VAE overflow (huge latents) on CPU, through render() and the writer."""
    pipe = plain_pipeline("tiny-sdxl-turbo")
    pipe.vae.to(torch.float16)
    spec = spec_for(tmp_path, tmp_path, model="tiny-sdxl-turbo", shard_size=2)
    renderer = tamper(PipelineRenderer(pipe, spec, "cpu"), "BREAK", lambda lat: lat * 3e4)
    seen = spy_stats(monkeypatch)
    results = render_two(renderer)

    # One fused pass over the float16 batch flags the overflow; only that image is redone in float32.
    (dtype16, counts16), (dtype32, counts32) = seen
    assert dtype16 == torch.float16 and counts16[0] == 0 and counts16[1] > 0
    assert dtype32 == torch.float32 and counts32 == [0]
    assert [r.redecoded_fp32 for r in results] == [False, True]
    assert [r.nan_count for r in results] == [0, 0]  # of the image finally used

    # The redone image is the post-process of a plain float32 decode of the same latents.
    vae32 = renderer.decoder.fp32_copy
    latents = (
        pipe(
            ["a cat BREAK"],
            num_inference_steps=1,
            guidance_scale=0.0,
            height=48,
            width=40,
            generator=[torch.Generator("cpu").manual_seed(2)],
            output_type="latent",
        ).images
        * 3e4
    )
    with torch.no_grad():
        decoded = vae32.decode(latents / vae32.config.scaling_factor, return_dict=False)[0]
    np.testing.assert_array_equal(results[1].image, reference.postprocess_uint8(decoded)[0].numpy())
    assert results[1].mean == pytest.approx(float(results[1].image.mean()), abs=1e-6)
    assert results[1].dhash == hex_dhash(results[1].image)

    with (
        ThreadPoolExecutor(1) as pool,
        ShardWriter(Folder(str(tmp_path / "out")), Shard(0, "unused", 0, 2, 0, 1), spec, pool, max_pending=2) as writer,
    ):
        for r in results:
            writer.add_image(r)
        writer.commit({}, time.perf_counter())
    rows = read_metadata(tmp_path / "out")
    assert [(r["redecoded_fp32"], r["nan_count"]) for r in rows] == [(False, 0), (True, 0)]
    assert [r["dhash"] for r in rows] == [r.dhash for r in results]


def test_redecode_follows_the_stats_not_a_separate_check(tmp_path, monkeypatch):
    """A float16 decode the stats call broken is redone, though its pixels are all finite."""
    pipe = plain_pipeline("tiny-sdxl-turbo")
    pipe.vae.to(torch.float16)
    renderer = PipelineRenderer(pipe, spec_for(tmp_path, tmp_path, model="tiny-sdxl-turbo"), "cpu")
    real = decode_module.postprocess_with_stats

    def says_row0_broken(x: torch.Tensor) -> Any:
        images, stats = real(x)
        if x.dtype == torch.float16:
            stats.nan[0] += 1
        return images, stats

    monkeypatch.setattr(decode_module, "postprocess_with_stats", says_row0_broken)
    results = render_two(renderer)
    assert [r.redecoded_fp32 for r in results] == [True, False]
    assert [r.nan_count for r in results] == [0, 0]  # row 0's count is its float32 redo's


def test_float32_vae_nan_is_counted_not_redecoded(tmp_path, monkeypatch, tiny_model_dir):
    """Only float16 VAEs are redone; any other broken decode is kept and flagged by nan_count."""
    pipe = plain_pipeline("tiny-sd-turbo")
    spec = spec_for(tmp_path, tmp_path)

    def poison(lat: torch.Tensor) -> torch.Tensor:
        lat[:2, :2] = float("nan")
        return lat

    renderer = tamper(PipelineRenderer(pipe, spec, "cpu"), "BREAK", poison)
    seen = spy_stats(monkeypatch)
    results = render_two(renderer)
    assert len(seen) == 1 and seen[0][0] == torch.float32
    assert [r.redecoded_fp32 for r in results] == [False, False]
    assert results[0].nan_count == 0 and results[1].nan_count == seen[0][1][1] > 0
    assert renderer.decoder.fp32_copy is None
