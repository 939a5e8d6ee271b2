"""img2img rows in a RenderWorker (no Ray): init images from paths, URLs and bytes, resized to the
render size, each image within 1 level of diffusers' img2img call; bad init images fail alone."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from tests.conftest import write_parquet
from tests.helpers import assert_within_one_level, read_metadata, read_tar_images
from tests.unit.workers.test_control import spec_for
from tests.unit.workers.test_img2img import plain_img2img
from turbobatch.output.shard import Shard
from turbobatch.workers.actor import RenderWorker
from turbobatch.workers.init_images import InitImageLoader, resize


def png(seed: int, size: tuple[int, int] = (90, 70)) -> bytes:
    """A (width, height) image with a gradient and a coloured block."""
    rng = np.random.RandomState(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    pixels = np.stack([x * 255 // w, y * 255 // h, np.full_like(x, rng.randint(0, 255))], -1).astype(np.uint8)
    pixels[10:40, 20:50] = rng.randint(0, 255, 3)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def init_dataset(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png(1))
    (tmp_path / "img" / "b.png").write_bytes(png(2, (40, 48)))
    (tmp_path / "img" / "truncated.png").write_bytes(png(3)[: len(png(3)) // 2])
    (tmp_path / "img" / "text.png").write_bytes(b"not an image at all")
    (tmp_path / "img" / "wide.png").write_bytes(png(4, (64, 32)))
    refs = [
        "img/a.png",
        str(tmp_path / "img" / "b.png"),
        "img/missing.png",
        "img/truncated.png",
        "img/text.png",
        None,
        "img/wide.png",  # wider than tall
    ]
    prompts = ["a cat", "a dog", "x", "y", "z", "w", "a boat"]
    path = write_parquet(tmp_path / "p.parquet", {"prompt": prompts, "init": refs})
    return tmp_path, path


@pytest.mark.parametrize("model", ["tiny-sd-turbo", "tiny-sdxl-turbo"])
def test_img2img_rows_match_diffusers_and_bad_images_fail_alone(init_dataset, model):
    root, data = init_dataset
    spec = spec_for(
        root, root, model=model, init_image_column="init", strength=0.75, steps=2, shard_size=7, batch_size=8
    )
    RenderWorker(spec).render_shard(Shard(0, f"file://{data}", 0, 7, 0, 9))
    rows = read_metadata(root / "out")
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "error", "error", "error", "ok"]
    assert all(r["strength"] == 0.75 and r["resize_mode"] == "center_crop" for r in rows)
    assert rows[5]["error"] == "init image is null"
    assert "cannot be decoded" in rows[3]["error"] and "cannot be decoded" in rows[4]["error"]
    assert (rows[0]["init_width"], rows[0]["init_height"]) == (90, 70)
    assert (rows[6]["init_width"], rows[6]["init_height"]) == (64, 32)
    assert rows[2]["init_width"] is None

    images, pipe = read_tar_images(root / "out"), plain_img2img(model)
    for i, raw in ((0, png(1)), (1, png(2, (40, 48))), (6, png(4, (64, 32)))):
        row = rows[i]
        init = resize(Image.open(io.BytesIO(raw)).convert("RGB"), 48, 40, "center_crop")
        out = pipe(
            row["prompt"],
            image=init,
            strength=0.75,
            num_inference_steps=2,
            guidance_scale=0.0,
            generator=torch.Generator("cpu").manual_seed(row["seed"]),
            output_type="np",
        ).images[0]
        assert_within_one_level(images[row["key"]], (out * 255).round().astype(np.uint8), row["key"])


def test_paths_urls_and_missing_files(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png(1))
    refs = ["img/a.png", f"file://{tmp_path}/img/a.png", "img/missing.png", str(tmp_path / "img" / "a.png")]
    data = write_parquet(tmp_path / "p.parquet", {"prompt": ["a", "b", "c", "d"], "init": refs})
    spec = spec_for(tmp_path, tmp_path, model="tiny-sd-turbo", init_image_column="init", strength=1.0, shard_size=4)
    RenderWorker(spec).render_shard(Shard(0, f"file://{data}", 0, 4, 0, 9))
    rows = read_metadata(tmp_path / "out")
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "ok"]
    assert "init image 'img/missing.png' not found" in rows[2]["error"]
    assert rows[0]["init_image"] == "img/a.png"
    shas = {r["sha256"] for r in rows if r["status"] == "ok"}
    assert len(shas) == 3  # same init image, different seeds


@pytest.mark.parametrize(
    ("mode", "expected_corner"),
    [("center_crop", (255, 0, 0)), ("fit", (0, 0, 0)), ("stretch", (0, 0, 255))],
)
def test_resize_modes(mode, expected_corner):
    """A 60x20 image: blue left third, red middle, green right third; rendered at 20x20."""
    pixels = np.zeros((20, 60, 3), np.uint8)
    pixels[:, :20] = (0, 0, 255)
    pixels[:, 20:40] = (255, 0, 0)
    pixels[:, 40:] = (0, 255, 0)
    out = np.asarray(resize(Image.fromarray(pixels), 20, 20, mode))
    assert out.shape == (20, 20, 3)
    assert tuple(int(v) for v in out[1, 1]) == pytest.approx(expected_corner, abs=40)


def test_raw_bytes_init_images(tmp_path):
    data = write_parquet(tmp_path / "p.parquet", {"prompt": ["a"], "init": pa.array([png(5)], pa.binary())})
    spec = spec_for(
        tmp_path, data, model="tiny-sd-turbo", init_image_column="init", strength=0.5, steps=2, shard_size=1
    )
    RenderWorker(spec).render_shard(Shard(0, f"file://{data}", 0, 1, 0, 9))
    [row] = read_metadata(tmp_path / "out")
    assert row["status"] == "ok" and row["init_image"].startswith("bytes:sha256:")
    assert (row["init_width"], row["init_height"]) == (90, 70)


def test_decode_errors_name_the_image(tmp_path):
    loader = InitImageLoader(spec_for(tmp_path, tmp_path, init_image_column="init"))
    with pytest.raises(ValueError, match="init image is null"):
        loader.decode(None)
    with pytest.raises(ValueError, match="bytes:sha256:.* cannot be decoded"):
        loader.decode(b"\x89PNG\r\n\x1a\n broken")
