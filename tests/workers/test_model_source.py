"""Model folders named by a local path, a URL or a Hub id: listed on the driver, or a clear error."""

from __future__ import annotations

import socket

import pytest
import s3fs

from jobs.errors import JobError
from tests.conftest import s3_options
from tests.helpers import upload_folder
from workers.model_source import HUB, LOCAL, REMOTE, is_remote_url, open_source


def test_kinds_of_names(tiny_model_dir):
    assert open_source("model", "tiny-sd-turbo").kind == LOCAL
    by_url = open_source("model", f"file://{tiny_model_dir}")
    assert (by_url.kind, by_url.location) == (LOCAL, str(tiny_model_dir))
    assert "unet/diffusion_pytorch_model.safetensors" in by_url.files
    assert by_url.files["model_index.json"]["size"] == (tiny_model_dir / "model_index.json").stat().st_size
    assert is_remote_url("s3://b/m") and is_remote_url("gs://b/m") and not is_remote_url("file:///m")
    with pytest.raises(JobError, match=r"--vae: '/no/such/folder' is not a folder"):
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
    with pytest.raises(JobError, match=r"--model: cannot load 'nobody/no-such-model' \(.*\); expected a Hugging Face id"):
        open_source("model", "nobody/no-such-model")
    assert HUB == "hub"
