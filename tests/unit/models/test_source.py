"""Model folders named by a local path, a URL or a Hub id: listed on the driver, or a clear error."""

from __future__ import annotations

import json
import socket

import pytest
import s3fs

from tests.conftest import s3_options
from tests.helpers import upload_folder
from turbobatch.errors import JobError
from turbobatch.models.source import HUB, LOCAL, REMOTE, is_remote_url, open_source


def test_kinds_of_names(tiny_model_dir):
    assert open_source("model", "tiny-sd-turbo").kind == LOCAL
    by_url = open_source("model", f"file://{tiny_model_dir}")
    assert (by_url.kind, by_url.location) == (LOCAL, str(tiny_model_dir))
    assert "unet/diffusion_pytorch_model.safetensors" in by_url.files
    assert by_url.files["model_index.json"]["size"] == (tiny_model_dir / "model_index.json").stat().st_size
    assert is_remote_url("s3://b/m") and is_remote_url("gs://b/m") and not is_remote_url("file:///m")
    with pytest.raises(JobError, match=r"--vae: cannot load '/no/such/folder' \(FileNotFoundError: no folder /no/such"):
        open_source("vae", "/no/such/folder")


def test_a_model_in_a_bucket_is_listed_and_its_configs_read(s3_endpoint, s3_bucket, tiny_model_dir):
    options = s3_options(s3_endpoint)
    url = upload_folder(s3fs.S3FileSystem(**options), tiny_model_dir, f"s3://{s3_bucket}/models/tiny/")
    source = open_source("model", url, options)
    assert (source.kind, source.location) == (REMOTE, url.rstrip("/"))
    assert source.files.keys() == {str(p.relative_to(tiny_model_dir)) for p in tiny_model_dir.rglob("*") if p.is_file()}
    assert all(meta["etag"] for meta in source.files.values())  # S3 ETags: a re-upload is noticed
    assert source.read_json("unet/config.json")["sample_size"] == 32
    assert "secret" not in repr(source) and "storage_options" not in str(source.to_spec("none", ["model_index.json"]))


def test_missing_or_unreachable_model_urls_are_job_errors_naming_flag_and_url(s3_endpoint, s3_bucket):
    options = s3_options(s3_endpoint)
    with pytest.raises(JobError, match=rf"--model: s3://{s3_bucket}/models/none/ holds no files"):
        open_source("model", f"s3://{s3_bucket}/models/none/", options)
    with pytest.raises(JobError, match=r"--controlnet: s3://tb-no-such-bucket/cn holds no files \(a missing or empty"):
        open_source("controlnet", "s3://tb-no-such-bucket/cn", options)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(JobError, match=rf"--vae: cannot read s3://{s3_bucket}/v: endpoint unreachable .*{closed}"):
        open_source("vae", f"s3://{s3_bucket}/v", s3_options(closed))


def test_an_unknown_hub_id_offline_cannot_load():
    with pytest.raises(JobError, match=r"--model: cannot load 'nobody/no-such-model' \(.*\); expected a Hugging Face"):
        open_source("model", "nobody/no-such-model")
    assert HUB == "hub"


def test_offline_a_hub_id_is_listed_from_this_machines_hugging_face_cache(tmp_path, monkeypatch, tiny_model_dir):
    """As diffusers leaves a download there: refs/main names the commit, snapshots/<commit> holds
    the files it fetched (only some of the repository's)."""
    import shutil

    from huggingface_hub import constants

    from turbobatch.models.resolve import resolve_model

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--someone--tiny-sd-turbo"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    shutil.copytree(tiny_model_dir, repo / "snapshots" / ("a" * 40))
    # The commit's full listing, cached by the download: it has a checkpoint diffusers never fetched.
    listing = {"sd_turbo.safetensors": {"size": 5_000_000_000, "blob_id": "b" * 40}}
    listing.update(
        {
            str(p.relative_to(tiny_model_dir)): {"size": p.stat().st_size, "blob_id": "c" * 40}
            for p in tiny_model_dir.rglob("*")
            if p.is_file()
        }
    )
    (repo / "trees").mkdir()
    (repo / "trees" / f"{'a' * 40}.json").write_text(json.dumps({"format_version": 1, "files": listing}))
    from huggingface_hub import snapshot_download

    with pytest.raises(Exception, match="missing"):  # noqa: B017 - why the cache is read by hand
        snapshot_download("someone/tiny-sd-turbo", local_files_only=True)
    source = open_source("model", "someone/tiny-sd-turbo")
    assert (source.kind, source.offline, source.revision) == (HUB, True, "a" * 40)
    assert "unet/diffusion_pytorch_model.safetensors" in source.files
    assert resolve_model("someone/tiny-sd-turbo").native_height == 64
    assert source.to_spec("none", ["model_index.json"])["offline"] is True  # each node loads from its own cache
