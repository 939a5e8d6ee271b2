"""OUT/README.md: configs naming the committed files, declared features, and an honest text."""

from __future__ import annotations

import dataclasses
import logging

import pyarrow as pa
import pytest
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard

from turbobatch.jobs import card
from turbobatch.output.columns import encode_schema
from turbobatch.output.features import features_yaml
from turbobatch.spec.resolved import ResolvedJob

SECRET = "card-test-secret-5e1"


def spec(**kw) -> ResolvedJob:
    values = dict(
        input="s3://in/prompts/",
        output="/data/out/run-1",
        model="tiny-sd-turbo",
        steps=1,
        guidance_scale=0.0,
        device="cpu",
        dtype="float32",
        height=48,
        width=40,
        shard_size=4,
        keep_columns="label",
        kept_schema=encode_schema(pa.schema([("label", pa.int64())])),
        vae="tiny-taesd",
        storage_options={"key": "me", "secret": SECRET},
    )
    values.update(kw)
    return ResolvedJob(**values)


PLAN = {"num_shards": 3, "planned_at": "2026-01-02T03:04:05+00:00", "shards": []}
MARKERS = [
    {"shard": 0, "rows": 4, "ok": 3, "error": 1, "image_bytes": 3000, "committed_at": "2026-01-02T03:05:00+00:00"},
    {"shard": 2, "rows": 4, "ok": 4, "error": 0, "image_bytes": 4000, "committed_at": "2026-01-02T03:06:00+00:00"},
]
for _m, _size in zip(MARKERS, (10_000, 20_000)):  # every format's data file, so one list serves each format
    _m["files"] = {
        f"{folder}/{_m['shard']:06d}.{ext}": {"bytes": _size + i, "sha256": "0" * 64}
        for i, (folder, ext) in enumerate((("shards", "tar"), ("data", "parquet"), ("metadata", "parquet")))
    }


@pytest.mark.parametrize(
    "fmt, files, examples, size",
    [
        ("tar", ["shards/000000.tar", "shards/000002.tar"], 7, 30_000),
        ("parquet", ["data/000000.parquet", "data/000002.parquet"], 7, 30_002),
        ("files", ["metadata/000000.parquet", "metadata/000002.parquet"], 8, 30_004),
    ],
)
def test_configs_name_exactly_the_committed_files_and_declare_their_features(
    tmp_path, caplog, fmt, files, examples, size
):
    job = spec(format=fmt)
    (tmp_path / "README.md").write_text(card.card_text(job, PLAN, MARKERS, "mit", "/data/out/run-1"))
    data = DatasetCard.load(tmp_path / "README.md").data  # as `datasets` reads it
    assert data["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": files}]}]
    with caplog.at_level(logging.WARNING):
        info = DatasetInfosDict.from_dataset_card_data(data)["default"]
    assert caplog.records == []  # no "Ignoring part of dataset_info from the dataset card: The `splits` field ..."
    schema, images = card.declared_schema(job)
    assert data["dataset_info"]["features"] == features_yaml(schema, images)
    assert (info.splits["train"].num_examples, info.splits["train"].num_bytes) == (examples, size)
    assert "label" in (info.features["json"] if fmt == "tar" else info.features)


def test_the_text_says_what_how_and_when_without_secrets():
    resolved = spec(steps=1, guidance_scale=0.0)  # the driver sets the model's defaults (models/families.py)
    text = card.card_text(
        resolved, PLAN, MARKERS, "other (sai-nc-community, https://example.org/LICENSE)", "/data/out/run-1"
    )
    assert "| shards | 2 of 3 committed (incomplete: run the same render command again to finish) |" in text
    assert "| rows | 8: 7 ok (one image each), 1 error (no image; reason in metadata) |" in text
    assert "| kept input columns | `label` (int64) |" in text
    assert "| VAE | `tiny-taesd` |" in text and "1 step(s), guidance scale 0.0, 40x48, float32 on cpu" in text
    assert (
        "planned 2026-01-02T03:04:05+00:00; shards committed 2026-01-02T03:05:00+00:00 to 2026-01-02T03:06:00" in text
    )
    assert (
        "inherit the terms of that model's license; its model card states the license **other (sai-nc-community, https://example.org/LICENSE)**"
        in text
    )
    assert "turbobatch render s3://in/prompts/ /data/out/run-1 --model tiny-sd-turbo" in text
    assert "--keep-columns label" in text and "--vae tiny-taesd" in text
    assert SECRET not in text and '"secret": "***"' in text and "kept_schema" not in text
    assert 'load_dataset("/data/out/run-1", split="train")' in text


def test_no_committed_shard_means_no_config_and_an_unknown_license_is_said():
    text = card.card_text(spec(), PLAN, [], None, "/data/out/run-1")
    assert "configs:" not in text and "dataset_info:" in text
    assert "its model card could not be read here, so check the license there" in text


def test_the_model_license_comes_from_its_own_card(tmp_path, tiny_model_dir):
    assert card.model_license(str(tiny_model_dir)) is None  # the tiny twins have no card
    model = tmp_path / "model"
    model.mkdir()
    (model / "README.md").write_text("---\nlicense: openrail++\ntags: [x]\n---\n# A model\n")
    assert card.model_license(str(model)) == "openrail++"
    (model / "README.md").write_text(
        "---\nlicense: other\nlicense_name: sai-nc-community\nlicense_link: LICENSE.md\n---\ntext\n"
    )
    assert card.model_license(str(model)) == "other (sai-nc-community, LICENSE.md)"
    (model / "README.md").write_text("# no front matter\nlicense: mit\n")
    assert card.model_license(str(model)) is None
    assert card.model_license("bundled:sd-turbo") is None
    assert card.model_license("nobody/not-in-the-cache") is None  # never the network


def test_command_line_gives_only_what_differs_from_the_defaults():
    assert card.command_line(
        dataclasses.replace(
            spec(),
            vae=None,
            keep_columns=None,
            height=None,
            width=None,
            device=None,
            dtype=None,
            steps=None,
            guidance_scale=None,
        )
    ) == ("turbobatch render s3://in/prompts/ /data/out/run-1 --model tiny-sd-turbo --shard-size 4")
    # The variants the driver resolved are not flags: the command names the --variant the user gave.
    fp16 = dataclasses.replace(
        spec(),
        vae=None,
        keep_columns=None,
        height=None,
        width=None,
        device=None,
        dtype=None,
        steps=None,
        guidance_scale=None,
        variant="fp16",
        model_variant="fp16",
    )
    assert card.command_line(fp16) == (
        "turbobatch render s3://in/prompts/ /data/out/run-1 --model tiny-sd-turbo --shard-size 4 --variant fp16"
    )


def test_img2img_and_lora_rows_say_how_and_name_their_metadata_fields():
    plain = card.card_text(spec(), PLAN, MARKERS, "mit", "/data/out/run-1")
    assert "| img2img | none (text to image) |" in plain and "| LoRA | none |" in plain
    job = spec(
        init_image_column="photo",
        strength=0.6,
        strength_column="s",
        resize_mode="fit",
        lora=[["ink", "/loras/ink.safetensors", 0.8], ["oil", "org/oil", 1.0]],
        lora_column="style",
    )
    text = card.card_text(job, PLAN, MARKERS, "mit", "/data/out/run-1")
    assert (
        "| img2img | init images from column `photo`, strength 0.6, per row from `s`, resized by fit "
        "(each image's in metadata: `init_image`, `init_width`, `init_height`, `strength`, `resize_mode`) |"
    ) in text
    assert (
        "| LoRA | `ink` = `/loras/ink.safetensors` x 0.8, `oil` = `org/oil` x 1 (one per row by column `style`; "
        "each image's in metadata: `lora`) |"
    ) in text
    fused = card.card_text(spec(lora=[["ink", "/loras/ink.safetensors", 0.5]]), PLAN, MARKERS, "mit", "/x")
    assert "| LoRA | `ink` = `/loras/ink.safetensors` x 0.5 (fused into the weights;" in fused
    # the declared features carry those fields, so `datasets` reads them with their types
    schema, _ = card.declared_schema(dataclasses.replace(job, format="parquet"))
    fields = {f.name: str(f.type) for f in schema}
    assert {k: fields.get(k) for k in ("init_image", "init_width", "strength", "resize_mode", "lora")} == {
        "init_image": "string",
        "init_width": "int32",
        "strength": "double",
        "resize_mode": "string",
        "lora": "string",
    }
