"""workers/images.py: a shard's images from its input rows (keys, seeds, parameters, prompts, errors)."""

from __future__ import annotations

import pytest

from turbobatch.output.shard import Shard
from turbobatch.spec.resolved import ResolvedJob
from turbobatch.spec.sampling import SamplingParams
from turbobatch.workers.images import image_rows
from turbobatch.workers.rows import Row


def spec(**kw) -> ResolvedJob:
    values = dict(input="i", output="o", height=64, width=64, steps=1, seed=1000)
    values.update(kw)
    s = ResolvedJob(**values)
    s.validate()
    return s


def row(g: int, **kw) -> Row:
    values = dict(global_index=g, key=f"{g:09d}", prompt=f"p{g}", negative_prompt=None, seed=1000 + g * 2)
    values.update(kw)
    return Row(**values)


def test_each_image_gets_its_key_seed_parameters_and_prompt():
    job = spec(
        images_per_prompt=2,
        prompt_template="{prompt} in {style}",
        sweep={"style": ["ink", "oil"], "steps": [1, 3]},
        width_column="w",
    )
    rows = [row(5, fields={"prompt": "a fox"}, overrides={"width": 32}), row(6, fields={"prompt": "a cat"}, seed=77)]
    shard = Shard(0, "unused", 0, 2, 5, 9, image_start=5 * 8 + 6, image_end=6 * 8 + 3)  # cuts both rows
    images = image_rows(rows, shard, job)
    assert [(i.key, i.seed, i.prompt, i.params.steps, i.params.width, i.swept) for i in images] == [
        ("000000005_3_0", 1010, "a fox in oil", 3, 32, {"style": "oil", "steps": 3}),
        ("000000005_3_1", 1011, "a fox in oil", 3, 32, {"style": "oil", "steps": 3}),
        ("000000006_0_0", 77, "a cat in ink", 1, 64, {"style": "ink", "steps": 1}),  # its own seed: s + j
        ("000000006_0_1", 78, "a cat in ink", 1, 64, {"style": "ink", "steps": 1}),
        ("000000006_1_0", 77, "a cat in ink", 3, 64, {"style": "ink", "steps": 3}),  # same noise, other steps
    ]
    assert [(i.image_index, i.combination) for i in images] == [(0, 3), (1, 3), (0, 0), (1, 0), (0, 1)]
    assert all(i.error is None and i.fields == {} and i.overrides == {} for i in images)
    assert rows[0].key == "000000005" and rows[0].fields  # the input rows stay as read


def test_a_bad_row_makes_one_error_image_per_image_and_an_images_own_error_fails_it_alone():
    job = spec(images_per_prompt=3, prompt_template="{prompt}")
    rows = [
        row(0, error="seed -5 is outside [0, 2**63)", seed=None, fields={"prompt": "x"}),
        row(1, fields={"prompt": None}),
        row(2, seed=2**63 - 2, fields={"prompt": "y"}),
    ]
    images = image_rows(rows, Shard(0, "unused", 0, 3, 0, 9, 0, 9), job)
    assert [(i.key, i.error) for i in images] == [
        ("000000000_0", "seed -5 is outside [0, 2**63)"),
        ("000000000_1", "seed -5 is outside [0, 2**63)"),
        ("000000000_2", "seed -5 is outside [0, 2**63)"),
        ("000000001_0", "prompt template: field {prompt} (the prompt column) is null in this row"),
        ("000000001_1", "prompt template: field {prompt} (the prompt column) is null in this row"),
        ("000000001_2", "prompt template: field {prompt} (the prompt column) is null in this row"),
        ("000000002_0", None),
        ("000000002_1", None),
        ("000000002_2", "seed 9223372036854775806 + 2 (image 2 of the row) is outside [0, 2**63)"),
    ]


def test_one_image_per_row_is_the_row_itself():
    job = spec()
    rows = [row(3), row(4)]
    images = image_rows(rows, Shard(0, "unused", 0, 2, 3, 9), job)  # no image range: one image per row
    assert [(i.key, i.seed, i.prompt, i.params) for i in images] == [
        ("000000003", 1006, "p3", SamplingParams(1, 0.0, 64, 64)),
        ("000000004", 1008, "p4", SamplingParams(1, 0.0, 64, 64)),
    ]


def test_an_expanded_job_needs_shards_with_an_image_range():
    with pytest.raises(ValueError, match="has no image range, but each row makes 2 images"):
        image_rows([row(0)], Shard(0, "unused", 0, 1, 0, 9), spec(images_per_prompt=2))
