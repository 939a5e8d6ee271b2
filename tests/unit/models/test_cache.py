"""One copy per node: from the local S3 server (moto), counted at a proxy; killed copies; the Hub path."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import s3fs
import torch

from tests.conftest import REPO, s3_options
from tests.faultproxy import FaultProxy
from tests.helpers import upload_folder, wait_for
from turbobatch.models import cache as model_cache
from turbobatch.models.source import open_source
from turbobatch.models.variants import needed_files


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh $TURBOBATCH_CACHE: nothing copied before."""
    monkeypatch.setenv("TURBOBATCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def s3_model(s3_endpoint, s3_bucket, tiny_fp16_model_dir) -> str:
    fs = s3fs.S3FileSystem(**s3_options(s3_endpoint))
    return upload_folder(fs, tiny_fp16_model_dir, f"s3://{s3_bucket}/models/tiny-sd-turbo-fp16")


def entry(url: str, options: dict, variant: str = "fp16") -> dict:
    """The spec entry the driver makes for a pipeline folder (models/resolve.py resolve_weights)."""
    source = open_source("model", url, options)
    index = source.read_json("model_index.json")
    components = tuple(k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and all(v))
    return source.to_spec(variant, needed_files(source.files, variant, components))


def digests(folder: Path, names) -> dict[str, str]:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names}


def test_a_node_copies_only_the_variants_files_once_and_reuses_the_copy(
    cache, s3_endpoint, s3_model, tiny_fp16_model_dir
):
    with FaultProxy(int(s3_endpoint.rsplit(":", 1)[1])) as proxy:
        options = s3_options(proxy.url)
        source = entry(s3_model, options)
        weights = sorted(n for n in source["files"] if n.endswith(".safetensors"))
        assert weights == [
            "text_encoder/model.fp16.safetensors",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "vae/diffusion_pytorch_model.fp16.safetensors",
        ]
        proxy.paths.clear()  # the listing and the configs the driver read
        first = model_cache.fetch("model", source, options)
        second = model_cache.fetch("model", source, options)
        gets = proxy.gets_of("/models/")
    assert (first.action, second.action) == ("copied", "cached")
    assert first.path == second.path and Path(first.path).parent == cache / "models"
    assert first.bytes == sum(f["size"] for f in source["files"].values())
    # One GET per needed file, the plain weights never.
    assert sorted(p.split("/tiny-sd-turbo-fp16/", 1)[1] for p in gets) == sorted(source["files"])
    assert set(gets.values()) == {1}
    copy = Path(first.path)
    on_disk = sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file())
    assert on_disk == sorted([*source["files"], model_cache.MANIFEST])
    assert digests(copy, source["files"]) == digests(tiny_fp16_model_dir, source["files"])


def test_actors_of_a_node_wait_for_one_copy(cache, s3_endpoint, s3_model):
    with FaultProxy(int(s3_endpoint.rsplit(":", 1)[1])) as proxy:
        options = s3_options(proxy.url)
        source = entry(s3_model, options)
        proxy.paths.clear()
        results = []
        threads = [
            threading.Thread(target=lambda: results.append(model_cache.fetch("model", source, options)))
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        gets = proxy.gets_of("/models/")
    assert sorted(r.action for r in results) == ["cached", "cached", "copied"]
    assert len(gets) == len(source["files"]) and set(gets.values()) == {1}


def test_a_copy_killed_midway_is_never_loaded_and_is_redone(
    cache, tmp_path, s3_endpoint, s3_model, tiny_fp16_model_dir
):
    """A process SIGKILLed while it copies (slowed per file by an injected delay) leaves a partial
    staging folder and no copy; the next fetch deletes it, copies everything again, and the loaded
    weights equal the source's."""
    options = s3_options(s3_endpoint)
    source = entry(s3_model, options)
    (tmp_path / "source.json").write_text(json.dumps({"source": source, "options": options}))
    script = (
        "import json, sys; from turbobatch.models import cache as model_cache; a = json.load(open(sys.argv[1])); "
        "model_cache.fetch('model', a['source'], a['options'])"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "TURBOBATCH_TEST_FAULTS": json.dumps({"copy_delay_s": 3})}
    copier = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "source.json")], env=env, cwd=REPO)
    models = cache / "models"
    key = model_cache.cache_key(source)
    staging = models / f".{key}.staging"
    try:
        wait_for(lambda: staging.exists() and any(p.is_file() for p in staging.rglob("*")), 120, "a first copied file")
    finally:
        copier.send_signal(signal.SIGKILL)
        copier.wait(timeout=30)
    assert copier.returncode == -signal.SIGKILL
    partial = [p for p in staging.rglob("*") if p.is_file()]
    assert 0 < len(partial) < len(source["files"])  # killed mid-copy
    assert not (models / key).exists()

    fetched = model_cache.fetch("model", source, options)
    assert fetched.action == "copied" and fetched.bytes == sum(f["size"] for f in source["files"].values())
    assert not staging.exists()
    copy = Path(fetched.path)
    assert digests(copy, source["files"]) == digests(tiny_fp16_model_dir, source["files"])
    from diffusers import UNet2DConditionModel

    loaded = UNet2DConditionModel.from_pretrained(copy / "unet", variant="fp16").state_dict()
    expected = UNet2DConditionModel.from_pretrained(tiny_fp16_model_dir / "unet", variant="fp16").state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_a_changed_or_damaged_copy_is_refreshed_file_by_file(cache, s3_endpoint, s3_model, tiny_fp16_model_dir):
    """A re-uploaded file (same size, other bytes: a new ETag) and a file missing from the copy are
    fetched again; the unchanged files are reused without a GET."""
    fs = s3fs.S3FileSystem(**s3_options(s3_endpoint))
    with FaultProxy(int(s3_endpoint.rsplit(":", 1)[1])) as proxy:
        options = s3_options(proxy.url)
        copy = Path(model_cache.fetch("model", entry(s3_model, options), options).path)
        unet = "unet/diffusion_pytorch_model.fp16.safetensors"
        original = (tiny_fp16_model_dir / unet).read_bytes()
        changed = original[:-4] + b"\0\0\0\0"
        fs.pipe(f"{s3_model.removeprefix('s3://')}/{unet}", changed)
        source = entry(s3_model, options)  # the driver of the next run lists the new ETag
        proxy.paths.clear()
        refreshed = model_cache.fetch("model", source, options)
        assert refreshed.action == "copied" and (copy / unet).read_bytes() == changed
        assert list(proxy.gets_of("/models/")) == [f"{s3_model.removeprefix('s3:/')}/{unet}"]

        (copy / "vae/config.json").unlink()  # damaged by hand
        proxy.paths.clear()
        assert model_cache.fetch("model", source, options).action == "copied"
        assert list(proxy.gets_of("/models/")) == [f"{s3_model.removeprefix('s3:/')}/vae/config.json"]
        assert model_cache.fetch("model", source, options).action == "cached"


def test_no_room_for_a_copy_is_said_before_fetching(cache, s3_endpoint, s3_model, monkeypatch):
    options = s3_options(s3_endpoint)
    source = entry(s3_model, options)
    monkeypatch.setattr(model_cache.shutil, "disk_usage", lambda path: type("U", (), {"free": 1000})())
    with pytest.raises(OSError, match=r"no room for the model copy under .*: it needs 0.00 GiB, 0.00 GiB are free"):
        model_cache.fetch("model", source, options)
    assert not (cache / "models" / model_cache.cache_key(source)).exists()


def test_local_folders_load_in_place(cache, tiny_fp16_model_dir):
    source = entry(str(tiny_fp16_model_dir), {})
    fetched = model_cache.fetch("model", source)
    assert (fetched.action, fetched.path) == ("in_place", str(tiny_fp16_model_dir))
    assert not (cache / "models").exists()


def test_a_hub_model_is_downloaded_once_per_node_with_exactly_the_needed_files(cache, tiny_fp16_model_dir, monkeypatch):
    """The Hub cannot be reached here: snapshot_download is replaced by a stand-in that serves a
    local folder with the Hub's own pattern filter, so what it is asked for is what would be downloaded."""
    import shutil

    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    calls = []

    def snapshot_download(repo_id, *, revision, local_dir, allow_patterns, max_workers):
        listing = [str(p.relative_to(tiny_fp16_model_dir)) for p in tiny_fp16_model_dir.rglob("*") if p.is_file()]
        chosen = sorted(filter_repo_objects(listing, allow_patterns=allow_patterns))
        calls.append((repo_id, revision, chosen))
        for rel in chosen:
            Path(local_dir, rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(tiny_fp16_model_dir / rel, Path(local_dir, rel))
        Path(local_dir, ".cache", "huggingface").mkdir(parents=True)  # as huggingface_hub leaves it
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    local = entry(str(tiny_fp16_model_dir), {})
    source = {**local, "kind": "hub", "location": "someone/tiny-sd-turbo", "revision": "0" * 40, "offline": False}
    first = model_cache.fetch("model", source)
    assert model_cache.fetch("model", source).action == "cached"
    assert first.action == "copied"
    assert calls == [("someone/tiny-sd-turbo", "0" * 40, sorted(source["files"]))]  # once, exactly those
    copy = Path(first.path)
    assert not (copy / ".cache").exists()
    assert digests(copy, source["files"]) == digests(tiny_fp16_model_dir, source["files"])
    offline = {**source, "offline": True}
    assert model_cache.fetch("model", offline).action == "in_place"  # each node's own Hugging Face cache
