import json

import torch

from turbobatch.models import tiny
from turbobatch.models.resolve import resolve_model


def test_tiny_sd_turbo_has_sd_turbo_classes_and_scheduler(tiny_model_dir):
    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["scheduler"] == ["diffusers", "EulerDiscreteScheduler"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    scheduler = json.loads((tiny_model_dir / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["timestep_spacing"], scheduler["prediction_type"]) == ("trailing", "epsilon")
    assert (tiny_model_dir / "tokenizer" / "vocab.json").exists()
    assert (tiny_model_dir / "tokenizer" / "merges.txt").exists()


def test_native_size_is_read_from_the_configs(tiny_model_dir):
    info = resolve_model("tiny-sd-turbo")
    assert (info.native_height, info.native_width, info.location) == (64, 64, str(tiny_model_dir))


def test_build_is_deterministic_and_loads_through_from_pretrained(tiny_model_dir, tmp_path, monkeypatch):
    from diffusers import AutoPipelineForText2Image

    monkeypatch.setenv("TURBOBATCH_CACHE", str(tmp_path))
    rebuilt = tiny.tiny_model_path("tiny-sd-turbo")
    assert rebuilt != tiny_model_dir
    a = AutoPipelineForText2Image.from_pretrained(tiny_model_dir)
    b = AutoPipelineForText2Image.from_pretrained(rebuilt)
    for (name, pa_), (_, pb) in zip(a.unet.state_dict().items(), b.unet.state_dict().items()):
        assert torch.equal(pa_, pb), name
    assert a.tokenizer.model_max_length == 77
    assert len(a.tokenizer("x " * 200, truncation=False, verbose=False).input_ids) > 77
