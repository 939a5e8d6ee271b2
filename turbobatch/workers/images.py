"""A shard's images from its input rows: the job's expansion (spec/expand.py), as a recipe.

For each image index of the shard, in order, find its row, combination ``c`` and ``j``, then:

1. key and seed: ``<row key>``, ``<row key>_<j>`` or ``<row key>_<c>_<j>``, and the row's first
   seed + j (spec/expand.py);
2. sampling parameters: the job's, then what the row's columns set (--steps-column, ...), then
   the combination's swept values (a parameter is never both swept and set by a column);
3. prompt: the row's, or the template filled with the row's columns and the swept values;
4. errors: the row's (null prompt, bad seed, bad column value, a null template column) fail
   every image it would make, one error row each; an image's own (a seed past 2**63, a swept
   value the template's format spec refuses) fail it alone.

The shard holds a few thousand images at most; the job's images are never listed anywhere.
"""

from __future__ import annotations

import dataclasses

from turbobatch.output.shard import Shard
from turbobatch.spec import sampling
from turbobatch.spec.expand import Expansion
from turbobatch.spec.job import JobSpec
from turbobatch.spec.template import Template, template_of
from turbobatch.workers.rows import Row


def image_rows(rows: list[Row], shard: Shard, spec: JobSpec) -> list[Row]:
    """The shard's images, in image-index order, from the input rows it read (``rows``)."""
    expansion = Expansion.of(spec)
    if shard.image_start is None and expansion.per_row > 1:
        raise ValueError(
            f"shard {shard.shard_id} has no image range, but each row makes {expansion.per_row} "
            "images: plan it with jobs.plan.make_plan"
        )
    template = template_of(spec)
    base = spec.sampling()
    by_index = {row.global_index: row for row in rows}
    images = []
    for i in shard.images:
        g, c, j = expansion.locate(i)
        images.append(_image(by_index[g], c, j, expansion, template, base))
    return images


def _image(
    row: Row, c: int, j: int, expansion: Expansion, template: Template | None, base: sampling.SamplingParams
) -> Row:
    swept = expansion.values(c)
    seed, seed_error = Expansion.seed(row.seed, j) if row.seed is not None else (None, None)
    params = base.replace({**row.overrides, **{k: v for k, v in swept.items() if k in sampling.NAMES}})
    prompt, prompt_error = template.render({**row.fields, **swept}) if template else (row.prompt, None)
    return dataclasses.replace(
        row,
        key=expansion.key(row.key, c, j),
        seed=seed,
        prompt=prompt,
        error=row.error or seed_error or prompt_error,
        image_index=j,
        combination=c,
        params=params,
        swept=swept,
        fields={},
        overrides={},
    )
