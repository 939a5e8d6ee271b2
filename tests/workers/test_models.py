import pytest

from jobs.errors import JobError
from workers.models import check_vae, resolve_controlnet, resolve_model
from workers.tiny import tiny_model_path


def test_families_and_native_sizes():
    sd, sdxl = resolve_model("tiny-sd-turbo"), resolve_model("tiny-sdxl-turbo")
    assert (sd.pipeline_class, sd.addition_embed_type, sd.native_height) == ("StableDiffusionPipeline", None, 64)
    assert (sdxl.pipeline_class, sdxl.addition_embed_type, sdxl.native_width) == ("StableDiffusionXLPipeline", "text_time", 64)


def test_controlnets_pair_with_their_family_only():
    sd, sdxl = resolve_model("tiny-sd-turbo"), resolve_model("tiny-sdxl-turbo")
    assert resolve_controlnet("tiny-sd-controlnet", sd).cross_attention_dim == 32
    assert resolve_controlnet("tiny-sdxl-controlnet", sdxl).addition_embed_type == "text_time"
    with pytest.raises(JobError, match=r"--controlnet: 'tiny-sd-controlnet' was made for SD 1.x/2.x models .* is SDXL"):
        resolve_controlnet("tiny-sd-controlnet", sdxl)
    with pytest.raises(JobError, match=r"--controlnet: 'tiny-sdxl-controlnet' was made for SDXL models .* is SD 1.x/2.x"):
        resolve_controlnet("tiny-sdxl-controlnet", sd)


def test_wrong_kinds_of_folders_are_named(tmp_path):
    with pytest.raises(JobError, match="--controlnet: cannot load 'tiny-sd-turbo'"):
        resolve_controlnet("tiny-sd-turbo", resolve_model("tiny-sd-turbo"))
    with pytest.raises(JobError, match="--vae: .* is a ControlNetModel; expected a folder of AutoencoderKL"):
        check_vae(str(tiny_model_path("tiny-sd-controlnet")))
    assert check_vae(str(tiny_model_path("tiny-sdxl-turbo") / "vae")).endswith("vae")
    with pytest.raises(JobError, match="--vae: cannot load"):
        check_vae(str(tmp_path))
