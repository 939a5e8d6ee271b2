"""workers/batches.py with images that differ in size, steps and guidance: one kind per call.

The real tiny pipeline; the sampler is watched (not replaced) to see what each call held.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import assert_within_one_level
from tests.unit.workers.test_actor import resolved_spec
from tests.unit.workers.test_control import plain_pipeline
from turbobatch import faults
from turbobatch.spec.sampling import SamplingParams
from turbobatch.workers.batches import PipelineRenderer, Rendered
from turbobatch.workers.rows import Row

SMALL, WIDE, TWO_STEPS, GUIDED = (
    SamplingParams(1, 0.0, 32, 32),
    SamplingParams(1, 0.0, 32, 48),
    SamplingParams(2, 0.0, 32, 32),
    SamplingParams(1, 2.0, 32, 32),
)
# Interleaved, as a sweep with the size varying fastest makes them.
KINDS = [SMALL, WIDE, TWO_STEPS, SMALL, GUIDED, WIDE, SMALL, TWO_STEPS, None]  # None: the job's (= SMALL)


def rows() -> list[Row]:
    return [Row(i, f"k{i}", f"prompt {i % 3}", None, 40 + i, params=p) for i, p in enumerate(KINDS)]


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return plain_pipeline("tiny-sd-turbo")


def watched(renderer: PipelineRenderer) -> list[tuple[SamplingParams, list[int]]]:
    """(params, seeds) of every sampler call the renderer makes."""
    calls = []
    real = renderer.sampler.sample

    def sample(prompts, negatives, seeds, controls=None, params=None):
        calls.append((params, list(seeds)))
        return real(prompts, negatives, seeds, controls, params)

    renderer.sampler.sample = sample
    return calls


def test_a_call_never_mixes_sizes_steps_or_guidance_and_groups_keep_their_order(pipe, tmp_path):
    renderer = PipelineRenderer(pipe, resolved_spec(tmp_path, height=32, width=32, batch_size=2), "cpu")
    calls = watched(renderer)
    results = list(renderer.render(rows()))
    by_seed = {40 + i: (p or SMALL) for i, p in enumerate(KINDS)}
    assert calls == [
        (SMALL, [40, 43]),
        (SMALL, [46, 48]),  # groups in order of their first row; rows in order within
        (WIDE, [41, 45]),
        (TWO_STEPS, [42, 47]),
        (GUIDED, [44]),
    ]
    assert all(by_seed[s] == p for p, seeds in calls for s in seeds)
    assert [r.row.seed for r in results] == [s for _, seeds in calls for s in seeds]
    for r in results:
        p = by_seed[r.row.seed]
        assert isinstance(r, Rendered) and r.image.shape == (p.height, p.width, 3)


def test_each_image_is_its_own_parameters_plain_diffusers_call(pipe, tmp_path):
    renderer = PipelineRenderer(pipe, resolved_spec(tmp_path, height=32, width=32, batch_size=3), "cpu")
    for r in renderer.render(rows()):
        p = r.row.params or SMALL
        expected = pipe(
            r.row.prompt,
            num_inference_steps=p.steps,
            guidance_scale=p.guidance_scale,
            height=p.height,
            width=p.width,
            generator=torch.Generator("cpu").manual_seed(r.row.seed),
            output_type="np",
        ).images[0]
        assert_within_one_level(r.image, (expected * 255).round().astype("uint8"), f"{r.row.key} {p}")


def test_out_of_memory_halves_within_a_group(pipe, tmp_path, monkeypatch):
    monkeypatch.setenv(faults.ENV, json.dumps({"oom_above_batch": 1}))
    faults._faults.cache_clear()
    try:
        renderer = PipelineRenderer(pipe, resolved_spec(tmp_path, height=32, width=32, batch_size=4), "cpu")
        calls = watched(renderer)
        results = list(renderer.render(rows()))
    finally:
        monkeypatch.delenv(faults.ENV)
        faults._faults.cache_clear()
    assert renderer.rows_per_call == 1 and len(results) == len(KINDS)
    by_seed = {40 + i: (p or SMALL) for i, p in enumerate(KINDS)}
    assert all(by_seed[s] == p for p, seeds in calls for s in seeds)  # the retries kept to their group
    assert sorted(r.row.seed for r in results if isinstance(r, Rendered)) == [40 + i for i in range(len(KINDS))]
