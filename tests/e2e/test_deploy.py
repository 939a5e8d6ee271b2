"""Deployment: `ray job submit` to a real `ray start --head`, and the cluster configs.

The head (tests/raycluster.py) runs in its own process group, temp dir, token file and ports, so
it never touches the in-process Ray of other tests (or anyone else's).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import REPO, write_parquet
from tests.helpers import corrupt_parquet, processes_titled, read_metadata, wait_for
from tests.raycluster import Head, started_head, started_worker_node
from turbobatch import faults

MAX_UPLOAD_BYTES = 5 * 2**20
SIZE = ["--height", "32", "--width", "32"]


@pytest.fixture(scope="module")
def ray_head(tiny_model_dir: Path) -> Iterator[Head]:
    with started_head(num_cpus=2) as head:
        yield head


@pytest.mark.slow
def test_job_submit_succeeds_and_uploads_a_small_working_dir(ray_head: Head, tmp_path: Path) -> None:
    out = tmp_path / "out"
    status, status_out, logs = ray_head.run_job(
        "examples/prompts.parquet", str(out), "--model", "tiny-sd-turbo", "--shard-size", "10", *SIZE
    )
    assert status == "SUCCEEDED", f"{status_out}\n{logs}"
    assert "shards: 5/5 committed" in logs and "images this run: 49 ok, 1 error" in logs, logs

    # The output, as a reader sees it: 5 committed shards, every row once, the null prompt an error.
    assert sorted(p.name for p in (out / "_done").iterdir()) == [f"{i:06d}.json" for i in range(5)]
    rows = read_metadata(out)
    assert [r["global_index"] for r in rows] == list(range(50))
    assert [r["error"] for r in rows if r["status"] == "error"] == ["prompt is null"]
    assert len(list((out / "shards").glob("*.tar"))) == 5

    # What `--working-dir .` shipped: code only (.rayignore/.gitignore keep .venv, .git, outputs out).
    uploaded = ray_head.last_uploaded_working_dir()
    files = [p for p in uploaded.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    print(f"uploaded working dir: {len(files)} files, {size / 1024:.0f} KiB")
    top = {p.relative_to(uploaded).parts[0] for p in files}
    assert {"turbobatch", "pyproject.toml"} <= top
    assert not top & {".git", ".venv", "out", ".pytest_cache"}, top
    assert size < MAX_UPLOAD_BYTES, f"working dir upload is {size} bytes: {sorted(top)}"


@pytest.mark.slow
def test_job_submit_runs_the_checkouts_code_on_the_driver_and_in_actors(ray_head: Head) -> None:
    """`ray job submit --working-dir .` from the checkout: the job's driver and its actors import
    turbobatch from the uploaded copy of the checkout, not from an installed one."""
    probe = (
        "import ray, turbobatch; ray.init(); "
        "print('driver', turbobatch.__file__); "
        "print('actor', ray.get(ray.remote(lambda: __import__('turbobatch').__file__).remote()))"
    )
    status, status_out, logs = ray_head.follow(ray_head.submit(entrypoint=("python", "-c", probe)))
    assert status == "SUCCEEDED", f"{status_out}\n{logs}"
    uploaded = str(ray_head.temp_dir.resolve())
    origins = dict(line.split(" ", 1) for line in logs.splitlines() if line.startswith(("driver ", "actor ")))
    for side in ("driver", "actor"):
        assert origins[side].startswith(uploaded) and "working_dir_files" in origins[side], (side, origins, logs)
        assert origins[side].endswith("turbobatch/__init__.py"), origins


@pytest.mark.slow
def test_failed_shards_make_the_job_fail(ray_head: Head, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"prompt": [f"a good prompt {i}" for i in range(10)]}), data / "a-good.parquet")
    corrupt_parquet(data / "b-corrupt.parquet", [f"a corrupted prompt {i}" for i in range(10)])
    out = tmp_path / "out"
    status, status_out, logs = ray_head.run_job(
        str(data), str(out), "--model", "tiny-sd-turbo", "--shard-size", "10", *SIZE
    )

    # Exit code 1 (shards failed), not 2 (a bad job): planning passed, one shard's read failed.
    assert status == "FAILED", f"{status_out}\n{logs}"
    assert "exit code 1" in status_out, status_out
    assert "shards: 1/2 committed" in logs and "failed shard 1 (after 1 attempt(s)):" in logs, logs
    assert sorted(p.name for p in (out / "_done").iterdir()) == ["000000.json"]
    assert not (out / "metadata" / "000001.parquet").exists()


@pytest.mark.slow
def test_job_stop_ends_the_driver_cleanly_and_resubmitting_finishes(ray_head: Head, tmp_path: Path) -> None:
    """`ray job stop` sends SIGTERM: the driver kills its actors, logs how to resume and exits
    143; nothing is committed after it; the same submission finishes the job."""
    out = tmp_path / "out"
    args = ["examples/prompts.parquet", str(out), "--model", "tiny-sd-turbo", "--shard-size", "10", *SIZE]
    job_id = ray_head.submit(*args, env={faults.ENV: json.dumps({"delay_s": 0.3})})
    done = lambda: len(list((out / "_done").glob("*.json"))) if (out / "_done").exists() else 0  # noqa: E731
    wait_for(lambda: done() >= 1, 180, "a first committed shard")
    ray_head.ray("job", "stop", "--address", ray_head.address, job_id)
    status, status_out, logs = ray_head.follow(job_id)
    assert status == "STOPPED", f"{status_out}\n{logs}"
    assert "terminated: committed shards are kept; run the same command again to resume" in logs, logs
    committed = done()
    time.sleep(3)  # a surviving actor would commit its in-flight shard meanwhile
    assert done() == committed < 5

    status, status_out, logs = ray_head.run_job(*args)
    assert status == "SUCCEEDED", f"{status_out}\n{logs}"
    assert f"{committed} already committed" in logs
    assert [r["global_index"] for r in read_metadata(out)] == list(range(50))


@pytest.mark.slow
def test_a_lost_node_costs_only_its_in_flight_shards(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Two nodes of one CPU each, one actor on each; the worker node is SIGKILLed whole
    (raylet and actor) mid-shard. Its shards are requeued to the survivor without using up a
    retry (--max-retries 0); the job succeeds."""
    data = write_parquet(tmp_path / "p.parquet", {"prompt": [f"prompt {i}" for i in range(24)]})
    out = tmp_path / "out"
    with started_head(num_cpus=1) as head, started_worker_node(head, num_cpus=1) as node:
        wait_for(lambda: "/2.0 CPU" in head.ray("status", "--address", head.gcs_address), 60, "the second node")
        env = {
            **head.env,
            "RAY_ADDRESS": head.gcs_address,
            "TURBOBATCH_CACHE": os.environ["TURBOBATCH_CACHE"],
            "HF_HUB_OFFLINE": "1",
            faults.ENV: json.dumps({"delay_s": 0.4}),
        }
        driver = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "turbobatch",
                "render",
                str(data),
                str(out),
                "--model",
                "tiny-sd-turbo",
                "--shard-size",
                "4",
                "--workers",
                "2",
                "--max-retries",
                "0",
                *SIZE,
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(
                lambda: processes_titled("ray::RenderWorker.render_shard", session=node.pid),
                120,
                "an actor on the worker node inside render_shard",
            )
            node.kill()  # the node is gone: raylet, object store, its actor
            stdout, stderr = driver.communicate(timeout=300)
        finally:
            if driver.poll() is None:
                driver.kill()
    assert driver.returncode == 0, stderr[-3000:]
    assert "a render worker was lost with its node; starting a replacement" in stderr, stderr[-3000:]
    assert "requeued: its node was lost (not counted as a retry)" in stderr, stderr[-3000:]
    assert "retry" not in stderr.replace("not counted as a retry", ""), stderr[-3000:]
    assert "shards: 6/6 committed" in stdout
    rows = read_metadata(out)
    assert sorted(r["global_index"] for r in rows) == list(range(24))
    assert all(r["status"] == "ok" for r in rows)


# --------------------------------------------------------------------------- cluster.yaml


def load_yaml(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / name).read_text())


def validate_cluster_config(config: dict[str, Any]) -> None:
    """What `ray up` does before touching the cloud: fill in the provider's defaults, then check
    the result against Ray's bundled ray-schema.json (and its cross-field checks)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_is_valid_for_rays_cluster_launcher() -> None:
    config = load_yaml("cluster.yaml")
    validate_cluster_config(config)

    assert config["provider"]["type"] == "aws"
    assert isinstance(config["idle_timeout_minutes"], (int, float)) and config["idle_timeout_minutes"] > 0
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    [gpu_type] = [t for t in types.values() if t["resources"].get("GPU")]
    assert gpu_type["resources"]["GPU"] == 1, "one GPU per worker node: one RenderWorker each"
    assert gpu_type["min_workers"] == 0 < gpu_type["max_workers"] <= config["max_workers"]
    docker = config["docker"]
    assert "-gpu" in docker["worker_image"] and "--gpus all" in docker["worker_run_options"]
    assert any("pip install" in c and "turbobatch" in c for c in config["setup_commands"])


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def edit(config: dict[str, Any]) -> None:
        node = config
        for key in parents:
            node = node[key]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value

    return edit


@pytest.mark.parametrize(
    "edit",
    [
        _set("available_node_types.gpu_worker.max_workers", "eight"),  # wrong type
        _set("available_node_types.gpu_worker.resources", KeyError),  # required field removed
        _set("available_node_types.gpu_worker.resources", {"GPU": 0.5}),  # resources are integers
        _set("idle_timeout_minuts", 5),  # typo: unknown top-level field
        _set("head_node_type", "no_such_type"),  # head names a node type that does not exist
        _set("docker.worker_run_options", "--gpus all"),  # a string where a list is needed
    ],
    ids=["max_workers-str", "no-resources", "fractional-gpu", "typo", "unknown-head", "run-options-str"],
)
def test_cluster_yaml_validator_rejects_bad_edits(edit: Callable[[dict[str, Any]], None]) -> None:
    import jsonschema

    config = load_yaml("cluster.yaml")
    edit(config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate_cluster_config(config)


# --------------------------------------------------------------------------- deploy/rayjob.yaml


# RayJob / RayCluster spec fields of KubeRay's ray.io/v1 CRDs (v1.1-v1.4).
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds",
    "backoffLimit",
    "clusterSelector",
    "deletionStrategy",
    "entrypoint",
    "entrypointNumCpus",
    "entrypointNumGpus",
    "entrypointResources",
    "jobId",
    "managedBy",
    "metadata",
    "rayClusterSpec",
    "runtimeEnvYAML",
    "shutdownAfterJobFinishes",
    "submissionMode",
    "submitterConfig",
    "submitterPodTemplate",
    "suspend",
    "ttlSecondsAfterFinished",
}
RAYCLUSTER_SPEC_FIELDS = {
    "autoscalerOptions",
    "enableInTreeAutoscaling",
    "gcsFaultToleranceOptions",
    "headGroupSpec",
    "headServiceAnnotations",
    "managedBy",
    "rayVersion",
    "suspend",
    "workerGroupSpecs",
}


def _string_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _check_pod_template(template: dict[str, Any], where: str) -> dict[str, Any]:
    containers = template["spec"]["containers"]
    assert containers, f"{where}: template.spec.containers is empty"
    for c in containers:
        assert isinstance(c.get("name"), str) and isinstance(c.get("image"), str), f"{where}: container name/image"
    return containers[0]  # KubeRay treats the first container as the Ray container


def test_rayjob_manifest_has_what_kuberay_requires() -> None:
    """Fields KubeRay's CRD (ray.io/v1) requires, and how this job uses them."""
    from ray.runtime_env import RuntimeEnv

    from turbobatch.jobs.cli import parse_render_command

    job = load_yaml("deploy/rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])
    spec = job["spec"]
    # A misspelt field is dropped by the API server without a word: allow only KubeRay's.
    assert set(spec) <= RAYJOB_SPEC_FIELDS, set(spec) - RAYJOB_SPEC_FIELDS
    assert set(spec["rayClusterSpec"]) <= RAYCLUSTER_SPEC_FIELDS, set(spec["rayClusterSpec"]) - RAYCLUSTER_SPEC_FIELDS

    # The same entrypoint as everywhere else, with flags the CLI accepts.
    argv = shlex.split(spec["entrypoint"])
    assert argv[:4] == ["python", "-m", "turbobatch", "render"], argv
    render, _ = parse_render_command(argv[4:])
    assert render.input.startswith("s3://") and render.output.startswith("s3://")
    assert render.device == "cuda", "GPU nodes start at 0: --device cuda, or the job would pick CPU"

    # runtimeEnvYAML is a string holding a runtime env Ray accepts.
    assert isinstance(spec["runtimeEnvYAML"], str)
    RuntimeEnv(**yaml.safe_load(spec["runtimeEnvYAML"]))
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0

    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert _string_map(head["rayStartParams"]), "rayStartParams is map[string]string"
    head_container = _check_pod_template(head["template"], "headGroupSpec")
    assert "nvidia.com/gpu" not in head_container.get("resources", {}).get("limits", {})

    [workers] = cluster["workerGroupSpecs"]
    assert isinstance(workers["groupName"], str) and workers["groupName"]
    assert _string_map(workers["rayStartParams"])
    assert all(isinstance(workers[k], int) for k in ("replicas", "minReplicas", "maxReplicas"))
    assert 0 == workers["minReplicas"] <= workers["replicas"] <= workers["maxReplicas"]
    assert cluster["enableInTreeAutoscaling"] is True, "GPU workers scale from 0"
    container = _check_pod_template(workers["template"], "workerGroupSpecs[0]")
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1

    # Both groups run the image deploy/Dockerfile builds, on the Ray version the manifest names,
    # which is also the version of cluster.yaml's images.
    assert head_container["image"] == container["image"]
    version = cluster["rayVersion"]
    [base] = re.findall(r"^FROM (\S+)", (REPO / "deploy" / "Dockerfile").read_text(), re.MULTILINE)
    images = [base, *load_yaml("cluster.yaml")["docker"].values()]
    ray_images = [i for i in images if isinstance(i, str) and i.startswith("rayproject/ray:")]
    assert base in ray_images and all(i.startswith(f"rayproject/ray:{version}-") for i in ray_images), ray_images
