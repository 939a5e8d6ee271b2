"""img2img with per-row LoRAs and strengths, rendered twice: the same bytes (a resumed shard is
redone whole, so a rerun must reproduce it); and the driver's family check."""

from __future__ import annotations

import dataclasses

import pytest

from tests.conftest import write_parquet
from tests.helpers import image_digests, metadata_without_timings
from tests.lora_helpers import make_tiny_lora
from tests.unit.workers.test_control import spec_for
from tests.unit.workers.test_init_images import png
from turbobatch.errors import JobError
from turbobatch.models.img2img import check_img2img
from turbobatch.models.resolve import resolve_model
from turbobatch.output.shard import Shard
from turbobatch.workers.actor import RenderWorker


def test_a_rerun_gives_the_same_bytes(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(4):
        (tmp_path / "img" / f"{i}.png").write_bytes(png(i, (50 + 10 * i, 60)))
    lora = make_tiny_lora("tiny-sd-turbo", tmp_path / "lora", seed=1)
    data = write_parquet(
        tmp_path / "p.parquet",
        {
            "prompt": ["a", "b", "c", "d"],
            "init": [f"img/{i}.png" for i in range(4)],
            "s": [0.5, None, 1.0, 0.75],
            "style": ["ink", None, "ink", None],
        },
    )
    digests = []
    for run in ("one", "two"):
        spec = spec_for(
            tmp_path,
            tmp_path,
            model="tiny-sd-turbo",
            output=str(tmp_path / run),
            init_image_column="init",
            strength_column="s",
            strength=0.5,
            steps=4,
            lora=[f"ink={lora}:0.8"],
            lora_column="style",
            shard_size=4,
        )
        spec.validate()
        RenderWorker(spec).render_shard(Shard(0, f"file://{data}", 0, 4, 0, 9))
        digests.append((image_digests(tmp_path / run), metadata_without_timings(tmp_path / run)))
    assert len(digests[0][0]) == 4
    assert digests[0] == digests[1]
    rows = digests[0][1]
    assert [r["strength"] for r in rows] == [0.5, 0.5, 1.0, 0.75]
    assert [r["lora"] is not None for r in rows] == [True, False, True, False]


def test_a_family_without_img2img_is_a_job_error_before_any_actor(tmp_path):
    model = dataclasses.replace(resolve_model("tiny-sd-turbo"), pipeline_class="SomeOtherPipeline")
    spec = spec_for(tmp_path, "x", init_image_column="init", strength=1.0)  # 1 default step (turbo UNets) runs
    with pytest.raises(JobError, match="SomeOtherPipeline, which has no img2img"):
        check_img2img(spec, model)
    check_img2img(spec, resolve_model("tiny-sdxl-turbo"))  # supported: no error
    check_img2img(spec, resolve_model("tiny-z-image-turbo"))  # ZImageImg2ImgPipeline


def test_flux2_klein_img2img_is_refused_naming_why(tmp_path):
    """Flux2KleinPipeline's image= is reference conditioning, not img2img: refused before any actor."""
    spec = spec_for(tmp_path, "x", model="tiny-flux2-klein", init_image_column="init")
    with pytest.raises(JobError) as e:
        check_img2img(spec, resolve_model("tiny-flux2-klein"))
    text = str(e.value)
    assert "'tiny-flux2-klein' is a Flux2KleinPipeline" in text
    assert "no img2img pipeline for FLUX.2 klein" in text and "reference conditioning" in text
    assert "ZImagePipeline" in text  # what does work
