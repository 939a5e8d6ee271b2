"""Deployment: `ray job submit` to a real `ray start --head`, and the cluster configs.

The head runs in its own process group, temp dir, token file and ports, so it never touches the
in-process Ray of other tests (or anyone else's): teardown stops that process group, never
`ray stop` (which kills every Ray process on the machine).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import REPO, write_parquet
from tests.helpers import corrupt_parquet, kill_session, processes_titled, read_metadata, wait_for
from workers import faults

BIN = Path(sys.executable).parent  # the venv's bin: its `ray`, and the jobs' `python`
MAX_UPLOAD_BYTES = 5 * 2**20
SIZE = ["--height", "32", "--width", "32"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


# --------------------------------------------------------------------------- a real Ray head


def free_port_block(n: int) -> int:
    """First port of ``n`` consecutive free ports, below the kernel's ephemeral range and above
    Ray's default worker ports (10002-19999), so neither Ray nor the OS hands them out."""
    for _ in range(100):
        base = random.randrange(20000, 32000 - n)
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("", port))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no {n} consecutive free ports in 20000-32000")


def parse_status(out: str, job_id: str) -> str:
    """The status `ray job status` prints: "Job 'ID' succeeded|failed|was stopped" at the end,
    "Status for job 'ID': RUNNING" before."""
    if match := re.search(rf"Job '{job_id}' (succeeded|failed|was stopped)", out):
        return {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}[match.group(1)]
    match = re.search(rf"Status for job '{job_id}': (?:JobStatus\.)?(\w+)", out)
    assert match, f"cannot read the status of {job_id} in:\n{out}"
    return match.group(1)


@dataclass
class Head:
    address: str  # the dashboard / job-submission URL
    env: dict[str, str]
    temp_dir: Path
    gcs_address: str  # host:port, what `ray start --address` and RAY_ADDRESS take

    def ray(self, *args: str, timeout: float = 120) -> str:
        """Run a `ray` CLI command against this head; returns stdout + stderr."""
        result = subprocess.run([str(BIN / "ray"), *args], check=False, cwd=REPO, env=self.env, timeout=timeout,
                                capture_output=True, text=True)  # fmt: skip
        assert result.returncode == 0, f"ray {shlex.join(args)} -> {result.returncode}\n{result.stdout}{result.stderr}"
        return result.stdout + result.stderr

    def run_job(self, *render_args: str, timeout_s: float = 300) -> tuple[str, str, str]:
        """Submit `python -m jobs.render ...` with the repo as working dir, follow `ray job status`
        to the end; returns (status, status output, job logs)."""
        return self.follow(self.submit(*render_args), timeout_s)

    def submit(self, *render_args: str, env: dict[str, str] | None = None) -> str:
        """`ray job submit --no-wait` of `python -m jobs.render ...`; returns the job id."""
        job_id = f"turbobatch-{secrets.token_hex(4)}"
        env_vars = {"TURBOBATCH_CACHE": os.environ["TURBOBATCH_CACHE"], "HF_HUB_OFFLINE": "1", **(env or {})}
        self.ray("job", "submit", "--address", self.address, "--submission-id", job_id, "--no-wait",
                 "--working-dir", ".", "--runtime-env-json", json.dumps({"env_vars": env_vars}),
                 "--", "python", "-m", "jobs.render", *render_args)  # fmt: skip
        return job_id

    def follow(self, job_id: str, timeout_s: float = 300) -> tuple[str, str, str]:
        """Poll `ray job status` until the job ends; returns (status, status output, job logs)."""
        deadline = time.monotonic() + timeout_s
        while True:
            out = self.ray("job", "status", "--address", self.address, job_id)
            status = parse_status(out, job_id)
            if status in TERMINAL:
                break
            assert time.monotonic() < deadline, f"job {job_id} still {status} after {timeout_s} s:\n{out}"
            time.sleep(2)
        return status, out, self.ray("job", "logs", "--address", self.address, job_id)

    def last_uploaded_working_dir(self) -> Path:
        """The last working dir the cluster received (unpacked from the uploaded package)."""
        found = self.temp_dir.glob("session_latest/runtime_resources/working_dir_files/_ray_pkg_*")
        return max((p for p in found if p.is_dir()), key=lambda p: p.stat().st_mtime)


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:
            return  # the dashboard answers (maybe 401 without a token): it is up
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"Ray head not up after {timeout_s} s:\n{log.read_text(errors='replace')[-3000:]}")


def stop_head(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM `ray start --block` (it stops the processes it started), then SIGKILL whatever is
    left in its process group: raylet, GCS, dashboard, job drivers, workers."""
    pgid = proc.pid  # start_new_session: the group is ours alone
    if proc.poll() is None:
        proc.terminate()
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.25)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


HEAD_PORT_FLAGS = ["--port", "--dashboard-port", "--ray-client-server-port", "--node-manager-port",
                   "--object-manager-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                   "--runtime-env-agent-port", "--metrics-export-port"]  # fmt: skip
NODE_PORT_FLAGS = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                   "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port"]  # fmt: skip


def port_args(flags: list[str]) -> tuple[list[str], int]:
    """Free ports for ``flags`` and a worker-port range after them; returns (args, base)."""
    base = free_port_block(64)
    args = [arg for i, flag in enumerate(flags) for arg in (flag, str(base + i))]
    return [*args, "--min-worker-port", str(base + 16), "--max-worker-port", str(base + 63)], base


@contextlib.contextmanager
def started_head(num_cpus: int) -> Iterator[Head]:
    """`ray start --head` on free ports with no usage stats; stopped even on failure."""
    # A short temp dir: Ray's Unix socket paths under it must stay below 108 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="tb-head-", dir="/tmp"))
    token = temp_dir / "auth_token"  # our own token: ~/.ray/auth_token stays untouched
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0")  # fmt: skip
    ports, base = port_args(HEAD_PORT_FLAGS)
    command = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", str(num_cpus), "--num-gpus", "0",
               "--disable-usage-stats", "--temp-dir", str(temp_dir), "--dashboard-host", "127.0.0.1", *ports]  # fmt: skip
    log_path = temp_dir / "head.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address = f"http://127.0.0.1:{base + 1}"
        wait_until_up(address, proc, log_path)
        yield Head(address, env, temp_dir, gcs_address=f"127.0.0.1:{base}")
    finally:
        stop_head(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head(tiny_model_dir: Path) -> Iterator[Head]:
    with started_head(num_cpus=2) as head:
        yield head


@pytest.mark.slow
def test_job_submit_succeeds_and_uploads_a_small_working_dir(ray_head: Head, tmp_path: Path) -> None:
    out = tmp_path / "out"
    status, status_out, logs = ray_head.run_job("examples/prompts.parquet", str(out), "--model", "tiny-sd-turbo",
                                                "--shard-size", "10", *SIZE)  # fmt: skip
    assert status == "SUCCEEDED", f"{status_out}\n{logs}"
    assert "shards: 5/5 committed" in logs and "rows this run: 49 ok, 1 error" in logs, logs

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
    assert {"jobs", "workers", "kernels", "pyproject.toml"} <= top
    assert not top & {".git", ".venv", "out", ".pytest_cache"}, top
    assert size < MAX_UPLOAD_BYTES, f"working dir upload is {size} bytes: {sorted(top)}"


@pytest.mark.slow
def test_failed_shards_make_the_job_fail(ray_head: Head, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"prompt": [f"a good prompt {i}" for i in range(10)]}), data / "a-good.parquet")
    corrupt_parquet(data / "b-corrupt.parquet", [f"a corrupted prompt {i}" for i in range(10)])
    out = tmp_path / "out"
    status, status_out, logs = ray_head.run_job(str(data), str(out), "--model", "tiny-sd-turbo",
                                                "--shard-size", "10", *SIZE)  # fmt: skip

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


@contextlib.contextmanager
def started_worker_node(head: Head, num_cpus: int) -> Iterator[subprocess.Popen]:
    """A second raylet joining ``head`` (`ray start --address`), in a session of its own."""
    ports, _ = port_args(NODE_PORT_FLAGS)
    command = [str(BIN / "ray"), "start", "--address", head.gcs_address, "--block", "--num-cpus", str(num_cpus),
               "--num-gpus", "0", *ports]  # fmt: skip
    log_path = head.temp_dir / "node.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, env=head.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        kill_session(proc.pid)
        proc.wait(timeout=10)


@pytest.mark.slow
def test_a_lost_node_costs_only_its_in_flight_shards(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Two nodes of one CPU each, one actor on each; the worker node is SIGKILLed whole
    (raylet and actor) mid-shard. Its shards are requeued to the survivor; the job succeeds."""
    data = write_parquet(tmp_path / "p.parquet", {"prompt": [f"prompt {i}" for i in range(24)]})
    out = tmp_path / "out"
    with started_head(num_cpus=1) as head, started_worker_node(head, num_cpus=1) as node:
        wait_for(lambda: "/2.0 CPU" in head.ray("status", "--address", head.gcs_address), 60, "the second node")
        env = {**head.env, "RAY_ADDRESS": head.gcs_address, "TURBOBATCH_CACHE": os.environ["TURBOBATCH_CACHE"],
               "HF_HUB_OFFLINE": "1", faults.ENV: json.dumps({"delay_s": 0.4})}  # fmt: skip
        driver = subprocess.Popen([sys.executable, "-m", "jobs.render", str(data), str(out), "--model", "tiny-sd-turbo",
                                   "--shard-size", "4", "--workers", "2", *SIZE], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            wait_for(lambda: processes_titled("ray::RenderWorker.render_shard", session=node.pid), 120,
                     "an actor on the worker node inside render_shard")  # fmt: skip
            kill_session(node.pid)  # the node is gone: raylet, object store, its actor
            stdout, stderr = driver.communicate(timeout=300)
        finally:
            if driver.poll() is None:
                driver.kill()
    assert driver.returncode == 0, stderr[-3000:]
    assert "a render worker died" in stderr and "retry 1/3" in stderr, stderr[-3000:]
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


@pytest.mark.parametrize("edit", [
    _set("available_node_types.gpu_worker.max_workers", "eight"),  # wrong type
    _set("available_node_types.gpu_worker.resources", KeyError),  # required field removed
    _set("available_node_types.gpu_worker.resources", {"GPU": 0.5}),  # resources are integers
    _set("idle_timeout_minuts", 5),  # typo: unknown top-level field
    _set("head_node_type", "no_such_type"),  # head names a node type that does not exist
    _set("docker.worker_run_options", "--gpus all"),  # a string where a list is needed
], ids=["max_workers-str", "no-resources", "fractional-gpu", "typo", "unknown-head", "run-options-str"])  # fmt: skip
def test_cluster_yaml_validator_rejects_bad_edits(edit: Callable[[dict[str, Any]], None]) -> None:
    import jsonschema

    config = load_yaml("cluster.yaml")
    edit(config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate_cluster_config(config)


# --------------------------------------------------------------------------- deploy/rayjob.yaml


# RayJob / RayCluster spec fields of KubeRay's ray.io/v1 CRDs (v1.1-v1.4).
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy", "entrypoint",
    "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "managedBy", "metadata",
    "rayClusterSpec", "runtimeEnvYAML", "shutdownAfterJobFinishes", "submissionMode", "submitterConfig",
    "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished",
}  # fmt: skip
RAYCLUSTER_SPEC_FIELDS = {
    "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "headGroupSpec",
    "headServiceAnnotations", "managedBy", "rayVersion", "suspend", "workerGroupSpecs",
}  # fmt: skip


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

    from jobs.cli import parse_render_args

    job = load_yaml("deploy/rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])
    spec = job["spec"]
    # A misspelt field is dropped by the API server without a word: allow only KubeRay's.
    assert set(spec) <= RAYJOB_SPEC_FIELDS, set(spec) - RAYJOB_SPEC_FIELDS
    assert set(spec["rayClusterSpec"]) <= RAYCLUSTER_SPEC_FIELDS, set(spec["rayClusterSpec"]) - RAYCLUSTER_SPEC_FIELDS

    # The same entrypoint as everywhere else, with flags the CLI accepts.
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs.render"], argv
    render = parse_render_args(argv[3:])
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
