"""SDXL-Turbo and ControlNet rendering in a RenderWorker (no Ray): determinism and bad rows."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from tests.conftest import write_parquet
from tests.helpers import assert_within_one_level, read_metadata, read_tar_images
from turbobatch.models.tiny import tiny_model_path
from turbobatch.output.shard import Shard
from turbobatch.spec.resolved import ResolvedJob
from turbobatch.workers.actor import RenderWorker
from turbobatch.workers.control import CANNY_HIGH, CANNY_LOW


def control_png(seed: int, size: tuple[int, int] = (90, 70)) -> bytes:
    rng = np.random.RandomState(seed)
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[10:50, 20:60] = rng.randint(0, 255, 3)  # a block gives Canny something to find
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def control_dataset(tmp_path):
    (tmp_path / "ctrl").mkdir()
    (tmp_path / "ctrl" / "a.png").write_bytes(control_png(1))
    (tmp_path / "ctrl" / "b.png").write_bytes(control_png(2))
    (tmp_path / "ctrl" / "broken.png").write_bytes(b"not a png")
    refs = ["ctrl/a.png", str(tmp_path / "ctrl" / "b.png"), "ctrl/missing.png", "ctrl/broken.png", None]
    path = write_parquet(tmp_path / "p.parquet", {"prompt": ["a cat", "a dog", "x", "y", "z"], "ctrl": refs})
    return tmp_path, path


def spec_for(tmp_path, data, **kw) -> ResolvedJob:
    values = dict(
        input=str(data),
        output=str(tmp_path / "out"),
        device="cpu",
        dtype="float32",
        height=48,
        width=40,
        shard_size=5,
        seed=3,
    )
    values.update(kw)
    return ResolvedJob(**values)


def plain_pipeline(model: str, controlnet: str | None = None, tiny_vae: str | None = None):
    from diffusers import AutoencoderTiny, AutoPipelineForText2Image, ControlNetModel

    extra = {"controlnet": ControlNetModel.from_pretrained(tiny_model_path(controlnet))} if controlnet else {}
    if tiny_vae:
        extra["vae"] = AutoencoderTiny.from_pretrained(tiny_model_path(tiny_vae))
    pipe = AutoPipelineForText2Image.from_pretrained(tiny_model_path(model), **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def plain_image(pipe, prompt: str, seed: int, **extra) -> np.ndarray:
    out = pipe(
        prompt=prompt,
        num_inference_steps=1,
        guidance_scale=0.0,
        height=48,
        width=40,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
        **extra,
    ).images
    return (out[0] * 255).round().astype(np.uint8)


def test_sdxl_turbo_matches_a_plain_diffusers_call(tmp_path):
    data = write_parquet(tmp_path / "p.parquet", {"prompt": ["a red fox", "日本 🎨", ""]})
    RenderWorker(spec_for(tmp_path, data, model="tiny-sdxl-turbo", shard_size=3)).render_shard(
        Shard(0, f"file://{data}", 0, 3, 0, 9)
    )
    images, pipe = read_tar_images(tmp_path / "out"), plain_pipeline("tiny-sdxl-turbo")
    for row in read_metadata(tmp_path / "out"):
        assert_within_one_level(images[row["key"]], plain_image(pipe, row["prompt"], row["seed"]), row["key"])
        assert row["redecoded_fp32"] is False


@pytest.mark.parametrize(
    "model, controlnet, preprocess",
    [
        ("tiny-sd-turbo", "tiny-sd-controlnet", "canny"),
        ("tiny-sdxl-turbo", "tiny-sdxl-controlnet", "none"),
    ],
)
def test_controlnet_rows_match_a_plain_call_and_bad_images_fail_alone(control_dataset, model, controlnet, preprocess):
    root, data = control_dataset
    spec = spec_for(
        root,
        root,
        model=model,
        controlnet=controlnet,
        control_image_column="ctrl",
        control_preprocess=preprocess,
        controlnet_scale=0.8,
    )
    RenderWorker(spec).render_shard(Shard(0, f"file://{data}", 0, 5, 0, 9))
    rows = read_metadata(root / "out")
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "error", "error"]
    assert "control image 'ctrl/missing.png' not found" in rows[2]["error"]
    assert "control image 'ctrl/broken.png' cannot be decoded" in rows[3]["error"]
    assert rows[4]["error"] == "control image is null"
    assert {(r["controlnet"], r["controlnet_scale"], r["control_preprocess"]) for r in rows} == {
        (controlnet, 0.8, preprocess)
    }
    assert rows[0]["control_image"] == "ctrl/a.png"

    from turbobatch import kernels

    images, pipe = read_tar_images(root / "out"), plain_pipeline(model, controlnet)
    for row, png in zip(rows[:2], (control_png(1), control_png(2))):
        control = Image.open(io.BytesIO(png)).convert("RGB")
        if preprocess == "canny":
            resized = np.asarray(control.resize((40, 48), resample=Image.LANCZOS))
            edges = kernels.canny(torch.from_numpy(resized).unsqueeze(0), CANNY_LOW, CANNY_HIGH)[0].numpy()
            assert edges.any()  # the control image really has edges
            control = Image.fromarray(np.stack([edges] * 3, axis=-1))
        expected = plain_image(pipe, row["prompt"], row["seed"], image=control, controlnet_conditioning_scale=0.8)
        assert_within_one_level(images[row["key"]], expected, row["key"])


def test_raw_bytes_control_images(tmp_path):
    data = write_parquet(tmp_path / "p.parquet", {"prompt": ["a"], "ctrl": pa.array([control_png(3)], pa.binary())})
    spec = spec_for(
        tmp_path,
        data,
        model="tiny-sd-turbo",
        controlnet="tiny-sd-controlnet",
        control_image_column="ctrl",
        shard_size=1,
    )
    RenderWorker(spec).render_shard(Shard(0, f"file://{data}", 0, 1, 0, 9))
    [row] = read_metadata(tmp_path / "out")
    assert row["status"] == "ok" and row["control_image"].startswith("bytes:sha256:")


def test_fp16_vae_overflow_is_decoded_again_in_float32(tmp_path):
    """A real float16 overflow (huge latents) on CPU: the stats flag it, a float32 decode fixes it."""
    from turbobatch.workers.decode import Decoder

    pipe = plain_pipeline("tiny-sdxl-turbo")
    pipe.vae.to(torch.float16)
    decoder = Decoder(pipe)
    latents = torch.randn(2, 4, 24, 20, generator=torch.Generator().manual_seed(0))
    latents[1] *= 3e4  # overflows float16 inside the decoder
    with torch.inference_mode():
        first, again = decoder.decode(latents), decoder.redecode_fp32(latents[1:])
    assert first.nonfinite[0] == 0 and first.nonfinite[1] > 0
    assert again.nonfinite.tolist() == [0]  # the redone image is finite
    assert decoder.fp32_copy is not None and pipe.vae.dtype == torch.float16  # the fp16 VAE is left as it was


def test_vae_swap_loads_through_from_pretrained(tmp_path):
    data = write_parquet(tmp_path / "p.parquet", {"prompt": ["a red fox"]})
    vae = str(tiny_model_path("tiny-sdxl-turbo") / "vae")
    for out, extra in (("plain", {}), ("swapped", {"vae": vae})):
        spec = spec_for(tmp_path, data, model="tiny-sdxl-turbo", shard_size=1, output=str(tmp_path / out), **extra)
        RenderWorker(spec).render_shard(Shard(0, f"file://{data}", 0, 1, 0, 9))
    plain, swapped = read_metadata(tmp_path / "plain"), read_metadata(tmp_path / "swapped")
    assert swapped[0]["vae"] == vae and plain[0]["vae"] is None
    assert swapped[0]["sha256"] == plain[0]["sha256"]  # the same weights, loaded the other way


@pytest.mark.parametrize("model", ["tiny-sd-turbo", "tiny-sdxl-turbo"])
def test_tiny_autoencoder_renders_what_diffusers_gives_with_it(tmp_path, model):
    """--vae with an AutoencoderTiny (TAESD class): the images are a plain diffusers call's with
    that VAE swapped in (within 1 level), and not the full VAE's."""
    data = write_parquet(tmp_path / "p.parquet", {"prompt": ["a red fox", "日本 🎨"]})
    spec = spec_for(tmp_path, data, model=model, shard_size=2, vae="tiny-taesd")
    RenderWorker(spec).render_shard(Shard(0, f"file://{data}", 0, 2, 0, 9))
    images, rows = read_tar_images(tmp_path / "out"), read_metadata(tmp_path / "out")
    tiny, full = plain_pipeline(model, tiny_vae="tiny-taesd"), plain_pipeline(model)
    assert [r["vae"] for r in rows] == ["tiny-taesd"] * 2
    for row in rows:
        assert_within_one_level(images[row["key"]], plain_image(tiny, row["prompt"], row["seed"]), row["key"])
        full_diff = np.abs(images[row["key"]].astype(int) - plain_image(full, row["prompt"], row["seed"]).astype(int))
        assert full_diff.max() > 1  # not the full VAE's image


def test_canny_control_images_are_made_at_each_swept_size(control_dataset):
    """A size sweep with --control-preprocess canny: each image's edges come from the control image
    resized to that image's own size, as a plain call at that size would make them."""
    from turbobatch import kernels

    root, data = control_dataset
    spec = spec_for(
        root,
        root,
        model="tiny-sd-turbo",
        controlnet="tiny-sd-controlnet",
        control_image_column="ctrl",
        control_preprocess="canny",
        sweep={"width": [40, 64]},
        shard_size=4,
    )
    spec.validate()
    worker = RenderWorker(spec)
    seen, real = [], worker.renderer.sampler.sample

    def sample(prompts, negatives, seeds, controls=None, params=None):
        seen.append((params.width, {c.size for c in controls}))  # what each call conditions on
        return real(prompts, negatives, seeds, controls, params)

    worker.renderer.sampler.sample = sample
    worker.render_shard(Shard(0, f"file://{data}", 0, 2, 0, 9, image_start=0, image_end=4))
    assert seen == [(40, {(40, 48)}), (64, {(64, 48)})]  # edge maps at the call's size (PIL: width, height)
    rows = read_metadata(root / "out")
    assert [(r["global_index"], r["width"], r["status"]) for r in rows] == [
        (0, 40, "ok"),
        (0, 64, "ok"),
        (1, 40, "ok"),
        (1, 64, "ok"),
    ]
    images, pipe = read_tar_images(root / "out"), plain_pipeline("tiny-sd-turbo", "tiny-sd-controlnet")
    for row in rows:
        control = Image.open(io.BytesIO(control_png(row["global_index"] + 1))).convert("RGB")
        resized = np.asarray(control.resize((row["width"], 48), resample=Image.LANCZOS))
        edges = kernels.canny(torch.from_numpy(resized.copy()).unsqueeze(0), CANNY_LOW, CANNY_HIGH)[0].numpy()
        out = pipe(
            row["prompt"],
            num_inference_steps=1,
            guidance_scale=0.0,
            height=48,
            width=row["width"],
            generator=torch.Generator("cpu").manual_seed(row["seed"]),
            output_type="np",
            image=Image.fromarray(np.stack([edges] * 3, axis=-1)),
        ).images
        assert images[row["key"]].shape == (48, row["width"], 3)
        assert_within_one_level(images[row["key"]], (out[0] * 255).round().astype(np.uint8), row["key"])
