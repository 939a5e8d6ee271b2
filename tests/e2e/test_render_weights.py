"""End to end through turbobatch render (cli.render_main) on a local Ray: which weight files a job reads (--variant),
models in a bucket (moto's S3 server) copied once per node, and start-up in the summary and status."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs

from tests.conftest import S3_SECRET, s3_options, write_parquet
from tests.faultproxy import FaultProxy
from tests.helpers import garble, image_digests, read_metadata, upload_folder, weight_files
from turbobatch.jobs.cli import render_main as main
from turbobatch.jobs.inspect.status import main as status_main

pytestmark = pytest.mark.slow
SIZE = ["--height", "32", "--width", "32", "--shard-size", "2", "--worker-cpus", "1"]
PROMPTS = [f"a lighthouse, take {i}" for i in range(8)]


def render(*argv) -> int:
    return main([*map(str, argv)])


@pytest.fixture
def prompts(tmp_path) -> Path:
    return write_parquet(tmp_path / "prompts.parquet", {"prompt": PROMPTS})


def model_copy(tiny_fp16_model_dir: Path, tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(tiny_fp16_model_dir, tmp_path / name))


def job_spec(out: Path) -> dict:
    return json.loads((out / "_job" / "spec.json").read_text())


def test_bfloat16_auto_reads_only_the_fp16_files(ray_cluster, tmp_path, prompts, tiny_fp16_model_dir, capsys):
    """The plain weight files are random bytes: loading them fails; the job renders anyway, and
    gives the images the intact model gives from its fp16 files."""
    from diffusers import AutoPipelineForText2Image

    model = model_copy(tiny_fp16_model_dir, tmp_path, "plain-garbled")
    assert len(garble(weight_files(model, fp16=False))) == 3  # unet, vae, text encoder
    with pytest.raises(Exception):  # noqa: B017 - OSError (diffusers) or SafetensorError (transformers)
        AutoPipelineForText2Image.from_pretrained(model)  # the plain files really cannot load

    out = tmp_path / "out"
    assert render(prompts, out, "--model", model, "--dtype", "bfloat16", *SIZE) == 0
    captured = capsys.readouterr()
    assert [r["status"] for r in read_metadata(out)] == ["ok"] * len(PROMPTS)
    spec = job_spec(out)
    assert spec["spec"]["model_variant"] == spec["fingerprint"]["spec"]["model_variant"] == "fp16"
    assert spec["spec"]["variant"] == "auto"
    weights = sorted(n for n in spec["spec"]["sources"]["model"]["files"] if n.endswith(".safetensors"))
    assert weights and all(".fp16." in n for n in weights)
    assert "turbobatch: weights: model variant fp16 (" in captured.err and "loaded in place" in captured.err
    assert "start-up: 1 actor, min / median / max: fetch " in captured.out
    assert "model folders: 0 copied, 0 from the node's cache, 1 loaded in place" in captured.out

    intact = tmp_path / "intact"
    assert render(prompts, intact, "--model", tiny_fp16_model_dir, "--dtype", "bfloat16", *SIZE) == 0
    assert image_digests(out) == image_digests(intact)

    # The variant is part of the job: resuming with other weight files is a changed job.
    capsys.readouterr()
    assert render(prompts, out, "--model", model, "--dtype", "bfloat16", "--variant", "none", *SIZE) == 2
    assert "--variant (model weights): 'fp16' -> 'none'" in capsys.readouterr().err


def test_float32_auto_reads_the_plain_files(ray_cluster, tmp_path, prompts, tiny_fp16_model_dir, tiny_model_dir):
    """The fp16 files are random bytes: a float32 job renders what the plain-only tiny model renders."""
    from diffusers import AutoPipelineForText2Image

    model = model_copy(tiny_fp16_model_dir, tmp_path, "fp16-garbled")
    assert len(garble(weight_files(model, fp16=True))) == 3
    with pytest.raises(Exception):  # noqa: B017 - OSError (diffusers) or SafetensorError (transformers)
        AutoPipelineForText2Image.from_pretrained(model, variant="fp16")  # the fp16 files really cannot load
    out, plain = tmp_path / "out", tmp_path / "plain"
    assert render(prompts, out, "--model", model, "--dtype", "float32", *SIZE) == 0
    assert job_spec(out)["spec"]["model_variant"] == "none"
    assert render(prompts, plain, "--model", tiny_model_dir, "--dtype", "float32", *SIZE) == 0
    assert image_digests(out) == image_digests(plain)


def test_variant_fp16_on_a_model_without_fp16_files_is_a_job_error(ray_cluster, no_actors, tmp_path, prompts, capsys):
    assert render(prompts, tmp_path / "out", "--model", "tiny-sd-turbo", "--variant", "fp16", *SIZE) == 2
    assert "--variant fp16: --model 'tiny-sd-turbo' has no fp16 weight files" in capsys.readouterr().err
    assert not (tmp_path / "out" / "_done").exists()


def test_a_missing_model_url_stops_the_job_before_any_actor(
    ray_cluster, no_actors, tmp_path, prompts, s3_endpoint, s3_bucket, capsys
):
    options = json.dumps(s3_options(s3_endpoint))
    url = f"s3://{s3_bucket}/models/never-uploaded/"
    assert render(prompts, tmp_path / "out", "--model", url, "--input-storage-options", options, *SIZE) == 2
    err = capsys.readouterr().err
    assert f"--model: {url} holds no files" in err and S3_SECRET not in err


def test_a_model_in_a_bucket_renders_as_from_a_folder_and_each_node_copies_it_once(
    ray_cluster, tmp_path, s3_endpoint, s3_bucket, tiny_fp16_model_dir, monkeypatch, capsys
):
    """Two actors on the one node of a local Ray (--min-workers 2: both start before rendering):
    exactly one GET per file of the fp16 variant at the S3 server, none of the plain weights; the
    images equal those rendered from the same model in a local folder."""
    monkeypatch.setenv("TURBOBATCH_CACHE", str(tmp_path / "cache"))  # forwarded to the actors: nothing cached
    fs = s3fs.S3FileSystem(**s3_options(s3_endpoint))
    url = upload_folder(fs, tiny_fp16_model_dir, f"s3://{s3_bucket}/models/tiny-sd-turbo-fp16/")
    buf = io.BytesIO()
    pq.write_table(pa.table({"prompt": PROMPTS}), buf)
    fs.pipe(f"{s3_bucket}/prompts/p.parquet", buf.getvalue())
    out = tmp_path / "from-s3"
    with FaultProxy(int(s3_endpoint.rsplit(":", 1)[1])) as proxy:
        options = json.dumps(s3_options(proxy.url))
        assert (
            render(
                f"s3://{s3_bucket}/prompts/",
                out,
                "--model",
                url,
                "--dtype",
                "bfloat16",
                "--workers",
                "2",
                "--min-workers",
                "2",
                "--input-storage-options",
                options,
                *SIZE,
            )
            == 0
        )
        gets = {path.split("/tiny-sd-turbo-fp16/", 1)[1]: n for path, n in proxy.gets_of("/models/").items()}
    summary = capsys.readouterr().out

    fp16 = {str(p.relative_to(tiny_fp16_model_dir)) for p in weight_files(tiny_fp16_model_dir, fp16=True)}
    plain = {str(p.relative_to(tiny_fp16_model_dir)) for p in weight_files(tiny_fp16_model_dir, fp16=False)}
    assert {n: gets.get(n, 0) for n in fp16} == {n: 1 for n in fp16}  # two actors, one copy
    assert not plain & gets.keys()
    spec = job_spec(out)
    assert gets.keys() - {"model_index.json", "unet/config.json", "vae/config.json"} <= set(
        spec["spec"]["sources"]["model"]["files"]
    )  # the driver read 3 configs, the copy what it chose
    assert spec["spec"]["sources"]["model"]["kind"] == "remote" and spec["spec"]["model_variant"] == "fp16"
    assert S3_SECRET not in (out / "_job" / "spec.json").read_text()

    markers = [json.loads(p.read_text()) for p in sorted((out / "_done").glob("*.json"))]
    fetches = sorted(f["action"] for m in markers for f in m.get("model_fetch", []))
    assert fetches == ["cached", "copied"]
    assert "start-up: 2 actors, min / median / max: fetch " in summary
    assert "model folders: 1 copied (" in summary and "1 from the node's cache, 0 loaded in place" in summary
    assert status_main([str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["startup"]
    assert (report["actors"], report["copies"], report["cache_hits"]) == (2, 1, 1)
    assert report["copied_bytes"] == sum(f["size"] for f in spec["spec"]["sources"]["model"]["files"].values())

    local = tmp_path / "from-folder"
    assert (
        render(
            f"s3://{s3_bucket}/prompts/",
            local,
            "--model",
            tiny_fp16_model_dir,
            "--dtype",
            "bfloat16",
            "--input-storage-options",
            json.dumps(s3_options(s3_endpoint)),
            *SIZE,
        )
        == 0
    )
    assert image_digests(out) == image_digests(local)
