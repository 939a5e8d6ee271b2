"""Which files a variant needs, from a listing alone; checked against diffusers' own choice."""

import pytest

from turbobatch.errors import JobError
from turbobatch.models.variants import choose_variant, fp16_folders, hub_allow_patterns, is_weight_file, needed_files

# stabilityai/sd-turbo's layout, plus what other repositories put next to it.
SD_TURBO = [
    "model_index.json",
    "README.md",
    "sd_turbo.safetensors",
    "sd_turbo.ckpt",
    "image.png",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder/model.fp16.safetensors",
    "text_encoder/pytorch_model.bin",
    "text_encoder/flax_model.msgpack",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.non_ema.safetensors",
    "unet/diffusion_flax_model.msgpack",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.fp16.safetensors",
    "vae_onnx/model.onnx",
]
COMPONENTS = ("scheduler", "text_encoder", "tokenizer", "unet", "vae")
CONFIGS = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "vae/config.json",
]


def test_auto_takes_fp16_files_for_half_precision_and_plain_ones_for_float32():
    assert fp16_folders(SD_TURBO, COMPONENTS) == {"text_encoder": True, "unet": True, "vae": True}
    for dtype in ("float16", "bfloat16"):
        assert choose_variant("auto", dtype, SD_TURBO, COMPONENTS, "model", "m") == "fp16"
    assert choose_variant("auto", "float32", SD_TURBO, COMPONENTS, "model", "m") == "none"
    assert needed_files(SD_TURBO, "fp16", COMPONENTS) == sorted(
        CONFIGS
        + [
            "text_encoder/model.fp16.safetensors",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "vae/diffusion_pytorch_model.fp16.safetensors",
        ]
    )
    # Never the other precision, .bin next to safetensors, Flax, ONNX, EMA or the single-file checkpoint.
    assert needed_files(SD_TURBO, "none", COMPONENTS) == sorted(
        CONFIGS
        + [
            "text_encoder/model.safetensors",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.safetensors",
        ]
    )


def test_a_replaced_vae_is_not_fetched():
    needed = needed_files(SD_TURBO, "fp16", COMPONENTS, skip_weights_of=("vae",))
    assert "vae/config.json" in needed and not [n for n in needed if n.startswith("vae/") and is_weight_file(n)]


def test_folders_without_fp16_files_load_their_plain_ones():
    partial = [n for n in SD_TURBO if n != "text_encoder/model.fp16.safetensors"]
    assert choose_variant("auto", "float16", partial, COMPONENTS, "model", "m") == "fp16"
    assert choose_variant("fp16", "float32", partial, COMPONENTS, "model", "m") == "fp16"
    needed = needed_files(partial, "fp16", COMPONENTS)
    assert "text_encoder/model.safetensors" in needed and "unet/diffusion_pytorch_model.fp16.safetensors" in needed


def test_asking_for_files_a_model_lacks_is_a_job_error_naming_it():
    plain = [n for n in SD_TURBO if ".fp16." not in n]
    assert choose_variant("auto", "float16", plain, COMPONENTS, "model", "m") == "none"
    with pytest.raises(JobError, match=r"--variant fp16: --model 's3://b/m' has no fp16 weight files"):
        choose_variant("fp16", "float16", plain, COMPONENTS, "model", "s3://b/m")
    fp16_only = [n for n in SD_TURBO if not (n.startswith("unet/") and ".fp16." not in n and is_weight_file(n))]
    with pytest.raises(JobError, match=r"--variant none: --model 'm' has only fp16 weight files in unet"):
        choose_variant("none", "float32", fp16_only, COMPONENTS, "model", "m")
    assert choose_variant("auto", "float32", fp16_only, COMPONENTS, "model", "m") == "fp16"  # plain cannot load
    only_onnx = [n for n in SD_TURBO if not (n.startswith("unet/") and n.endswith(".safetensors"))]
    only_onnx = [n for n in only_onnx if n != "unet/diffusion_flax_model.msgpack"]
    assert choose_variant("auto", "float32", only_onnx, COMPONENTS, "model", "m") == "none"  # msgpack gone: no weights
    with pytest.raises(JobError, match=r"--model: 'm' has no weights from_pretrained can load in unet"):
        choose_variant("auto", "float32", [*only_onnx, "unet/model.onnx"], COMPONENTS, "model", "m")


def test_single_model_folders_sharded_weights_and_index_files():
    vae = [
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.fp16.safetensors",
        "sdxl_vae.safetensors",
        "diffusion_pytorch_model.bin",
    ]
    assert needed_files(vae, choose_variant("auto", "float16", vae, None, "vae", "v"), None) == [
        "config.json",
        "diffusion_pytorch_model.fp16.safetensors",
    ]
    assert needed_files(vae, "none", None) == ["config.json", "diffusion_pytorch_model.safetensors"]
    sharded = [
        "model_index.json",
        "text_encoder_2/config.json",
        "text_encoder_2/model-00001-of-00002.safetensors",
        "text_encoder_2/model-00002-of-00002.safetensors",
        "text_encoder_2/model.safetensors.index.json",
        "text_encoder_2/model.fp16-00001-of-00002.safetensors",
        "text_encoder_2/model.fp16-00002-of-00002.safetensors",
        "text_encoder_2/model.safetensors.index.fp16.json",
    ]
    assert needed_files(sharded, "fp16", ("text_encoder_2",)) == [
        "model_index.json",
        "text_encoder_2/config.json",
        "text_encoder_2/model.fp16-00001-of-00002.safetensors",
        "text_encoder_2/model.fp16-00002-of-00002.safetensors",
        "text_encoder_2/model.safetensors.index.fp16.json",
    ]
    assert needed_files(sharded, "none", ("text_encoder_2",)) == [
        "model_index.json",
        "text_encoder_2/config.json",
        "text_encoder_2/model-00001-of-00002.safetensors",
        "text_encoder_2/model-00002-of-00002.safetensors",
        "text_encoder_2/model.safetensors.index.json",
    ]


def test_the_fp16_weights_chosen_are_the_ones_diffusers_downloads():
    """diffusers' own choice for a Hub download (variant_compatible_siblings, with the ignore
    patterns its download uses when safetensors are there): the same weight files, folder by folder."""
    from diffusers.pipelines.pipeline_loading_utils import variant_compatible_siblings

    partial = [n for n in SD_TURBO if n != "text_encoder/model.fp16.safetensors"]
    for listing in (SD_TURBO, partial):
        usable, _ = variant_compatible_siblings(listing, variant="fp16", ignore_patterns=["*.bin", "*.msgpack"])
        theirs = {n for n in usable if n.split("/")[0] in COMPONENTS and n.endswith(".safetensors")}
        ours = {n for n in needed_files(listing, "fp16", COMPONENTS) if is_weight_file(n)}
        assert ours == theirs


def test_hub_patterns_select_exactly_the_needed_files():
    """snapshot_download filters with these patterns (fnmatch): nothing more, nothing less, also
    for names with fnmatch's special characters."""
    from huggingface_hub.utils import filter_repo_objects

    needed = needed_files(SD_TURBO, "fp16", COMPONENTS)
    assert sorted(filter_repo_objects(SD_TURBO, allow_patterns=hub_allow_patterns(needed))) == needed
    odd = [
        "unet/w[1].safetensors",
        "unet/w1.safetensors",
        "unet/a*b.json",
        "unet/axb.json",
        "unet/c?.txt",
        "unet/cd.txt",
    ]
    wanted = ["unet/a*b.json", "unet/c?.txt", "unet/w[1].safetensors"]
    assert sorted(filter_repo_objects(odd, allow_patterns=hub_allow_patterns(wanted))) == wanted
