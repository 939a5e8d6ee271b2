"""End to end on S3: moto's S3 server on 127.0.0.1, reached by s3fs, from a local Ray."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs

from turbobatch.jobs.render import main
from turbobatch.jobs.status import main as status_main
from tests.conftest import S3_SECRET, s3_options
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.slow
SMALL = ["--model", "tiny-sd-turbo", "--height", "32", "--width", "32", "--shard-size", "5"]


def upload_prompts(fs: s3fs.S3FileSystem, bucket: str) -> int:
    """Two files, odd row groups, one null prompt: 17 rows."""
    for name, prompts in (("a.parquet", [f"prompt {i}" for i in range(11)]),
                          ("b.parquet", ["x", None, "日本語 🎨", "", "long " * 40, "last"])):  # fmt: skip
        buf = io.BytesIO()
        pq.write_table(pa.table({"prompt": pa.array(prompts, pa.string())}), buf, row_group_size=4)
        fs.pipe(f"{bucket}/prompts/{name}", buf.getvalue())
    return 17


def read_outputs(fs: s3fs.S3FileSystem, out: str) -> tuple[list[dict], dict[str, bytes]]:
    fs.invalidate_cache()
    rows = []
    for path in sorted(fs.find(f"{out}/metadata")):
        rows += pq.read_table(io.BytesIO(fs.cat_file(path))).to_pylist()
    members = {}
    for path in sorted(fs.find(f"{out}/shards")):
        with tarfile.open(fileobj=io.BytesIO(fs.cat_file(path))) as tar:
            members.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    return rows, members


def every_object(fs: s3fs.S3FileSystem, bucket: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    return {path: fs.cat_file(path) for path in fs.find(bucket)}


def ray_log_files() -> list[Path]:
    import ray

    return [p for p in Path(ray._private.worker.global_worker.node.get_logs_dir_path()).rglob("*") if p.is_file()]


def test_s3_in_and_out_resume_and_no_secret_anywhere(ray_cluster, s3_endpoint, s3_bucket, capfd):
    options = s3_options(s3_endpoint)
    fs = s3fs.S3FileSystem(**options)
    total = upload_prompts(fs, s3_bucket)
    out = f"{s3_bucket}/out"
    argv = [f"s3://{s3_bucket}/prompts/", f"s3://{out}", *SMALL, "--storage-options", json.dumps(options)]
    assert main(argv) == 0

    rows, members = read_outputs(fs, out)
    assert sorted(r["global_index"] for r in rows) == list(range(total))
    assert [r["error"] for r in rows if r["status"] == "error"] == ["prompt is null"]
    assert len([m for m in members if m.endswith(".png")]) == total - 1
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.find(f"{out}/_done")) == [f"{i:06d}.json" for i in range(5)]

    # Resume after losing two done markers: exactly those shards are redone, same bytes.
    digests = {r["key"]: r["sha256"] for r in rows}
    fs.rm([f"{out}/_done/000001.json", f"{out}/_done/000003.json"])
    assert main(argv) == 0
    assert "(2 this run, 3 before" in capfd.readouterr().out
    assert {r["key"]: r["sha256"] for r in read_outputs(fs, out)[0]} == digests

    # The secret passed in storage options is nowhere: objects, driver output, Ray's logs.
    main(argv)  # once more, with output captured from here on
    captured = capfd.readouterr()
    secret = S3_SECRET.encode()
    leaks = [path for path, data in every_object(fs, s3_bucket).items() if secret in data]
    leaks += [str(p) for p in ray_log_files() if secret in p.read_bytes()]
    assert leaks == []
    assert S3_SECRET not in captured.out + captured.err
    spec = json.loads(fs.cat_file(f"{out}/_job/spec.json"))
    assert spec["spec"]["storage_options"]["secret"] == "***"


def test_transient_faults_are_retried_and_every_row_lands_once(ray_cluster, s3_endpoint, s3_bucket):
    fs = s3fs.S3FileSystem(**s3_options(s3_endpoint))
    total = upload_prompts(fs, s3_bucket)
    upstream_port = int(s3_endpoint.rsplit(":", 1)[1])
    with FaultProxy(upstream_port, refuse=0.05, reset=0.1, error_503=0.1, seed=7) as proxy:
        options = s3_options(proxy.url)
        argv = [f"s3://{s3_bucket}/prompts/", f"s3://{s3_bucket}/out", *SMALL, "--workers", "2",
                "--storage-options", json.dumps(options)]  # fmt: skip
        assert main(argv) == 0
    assert sum(proxy.faults.values()) >= 5, proxy.faults  # faults really happened
    rows, members = read_outputs(fs, f"{s3_bucket}/out")
    assert sorted(r["global_index"] for r in rows) == list(range(total))
    assert len({r["key"] for r in rows}) == total
    assert len([m for m in members if m.endswith(".png")]) == total - 1


def test_a_storage_outage_fails_the_attempt_and_the_shard_is_retried(ray_cluster, s3_endpoint, s3_bucket, capfd):
    """Shard 2's metadata PUT gets 503 ServiceUnavailable (botocore's retries off; the storage
    client still tries twice, so one attempt of the shard meets two 503s): with --max-retries 0 the shard fails and is
    recorded; in the rerun its first attempt fails again and the retry after backoff commits."""
    fs = s3fs.S3FileSystem(**s3_options(s3_endpoint))
    total = upload_prompts(fs, s3_bucket)
    out = f"{s3_bucket}/out"
    upstream_port = int(s3_endpoint.rsplit(":", 1)[1])
    with FaultProxy(upstream_port, unavailable=("metadata/000002.parquet", 2)) as proxy:
        options = {**s3_options(proxy.url), "config_kwargs": {"retries": {"max_attempts": 1}}}
        argv = [f"s3://{s3_bucket}/prompts/", f"s3://{out}", *SMALL, "--storage-options", json.dumps(options)]
        assert main([*argv, "--max-retries", "0"]) == 1
        failed = json.loads(fs.cat_file(f"{out}/_failed/000002.json"))
        assert failed["infrastructure"] is True and failed["attempts"] == 1, failed
        assert "ServiceUnavailable" in failed["detail"] or "Service is unable" in failed["detail"]
        capfd.readouterr()

        proxy.arm_outage("metadata/000002.parquet", 2)
        assert main(argv) == 0
        assert "shard 2: InfrastructureError" in capfd.readouterr().err
        assert proxy.faults["unavailable"] == 4
    fs.invalidate_cache()
    assert not fs.exists(f"{out}/_failed/000002.json")
    assert status_main([f"s3://{out}", "--json", "--storage-options", json.dumps(s3_options(s3_endpoint))]) == 0
    report = json.loads(capfd.readouterr().out)
    assert report["shards"] == {"total": 5, "committed": 5, "failed": 0, "pending": 0}
    assert report["images"]["ok"] == total - 1 and report["images"]["error"] == 1
    rows, members = read_outputs(fs, out)
    assert sorted(r["global_index"] for r in rows) == list(range(total))
    assert len([m for m in members if m.endswith(".png")]) == total - 1
