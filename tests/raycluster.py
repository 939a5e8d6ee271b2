"""Real Ray clusters for tests: a `ray start --head` and extra raylets (`ray start --address`),
each in a session, temp dir and ports of its own.

They never touch the in-process Ray of other tests, or anyone else's Ray on the machine: teardown
kills the process groups and sessions started here, never `ray stop` (which kills every Ray
process on the machine). The head uses token auth with its own token file (DESIGN.md).
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO
from tests.helpers import kill_session, session_members

BIN = Path(sys.executable).parent  # the venv's bin: its `ray`, and the jobs' `python`
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


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
    metrics_port: int = 0  # --metrics-export-port: Prometheus text at http://127.0.0.1:PORT/metrics
    session: int = 0  # the session (and process group) of every process of this head: for kills

    def metrics(self, timeout: float = 10) -> str:
        """The head node's Prometheus text, as Ray's metrics agent serves it."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=timeout) as r:
            return r.read().decode()

    def ray(self, *args: str, timeout: float = 120) -> str:
        """Run a `ray` CLI command against this head; returns stdout + stderr."""
        result = subprocess.run(
            [str(BIN / "ray"), *args],
            check=False,
            cwd=REPO,
            env=self.env,
            timeout=timeout,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, f"ray {shlex.join(args)} -> {result.returncode}\n{result.stdout}{result.stderr}"
        return result.stdout + result.stderr

    def run_job(self, *render_args: str, timeout_s: float = 300) -> tuple[str, str, str]:
        """Submit `python -m turbobatch render ...` with the repo as working dir, follow `ray job status`
        to the end; returns (status, status output, job logs)."""
        return self.follow(self.submit(*render_args), timeout_s)

    def submit(
        self,
        *render_args: str,
        env: dict[str, str] | None = None,
        entrypoint: tuple[str, ...] = ("python", "-m", "turbobatch", "render"),
    ) -> str:
        """`ray job submit --no-wait` of `python -m turbobatch render ...` (or another entrypoint) with the
        checkout as working dir; returns the job id."""
        job_id = f"turbobatch-{secrets.token_hex(4)}"
        env_vars = {"TURBOBATCH_CACHE": os.environ["TURBOBATCH_CACHE"], "HF_HUB_OFFLINE": "1", **(env or {})}
        self.ray(
            "job",
            "submit",
            "--address",
            self.address,
            "--submission-id",
            job_id,
            "--no-wait",
            "--working-dir",
            ".",
            "--runtime-env-json",
            json.dumps({"env_vars": env_vars}),
            "--",
            *entrypoint,
            *render_args,
        )
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


HEAD_PORT_FLAGS = [
    "--port",
    "--dashboard-port",
    "--ray-client-server-port",
    "--node-manager-port",
    "--object-manager-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
]
NODE_PORT_FLAGS = [
    "--node-manager-port",
    "--object-manager-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
]


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
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
        RAY_USAGE_STATS_ENABLED="0",
    )
    ports, base = port_args(HEAD_PORT_FLAGS)
    command = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--num-cpus",
        str(num_cpus),
        "--num-gpus",
        "0",
        "--disable-usage-stats",
        "--temp-dir",
        str(temp_dir),
        "--dashboard-host",
        "127.0.0.1",
        *ports,
    ]
    log_path = temp_dir / "head.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address = f"http://127.0.0.1:{base + 1}"
        wait_until_up(address, proc, log_path)
        yield Head(
            address,
            env,
            temp_dir,
            gcs_address=f"127.0.0.1:{base}",
            metrics_port=base + HEAD_PORT_FLAGS.index("--metrics-export-port"),
            session=proc.pid,
        )
    finally:
        stop_head(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


@dataclass
class Node:
    """A raylet joined to a head, in a session and temp dir of its own."""

    proc: subprocess.Popen
    temp_dir: Path

    @property
    def pid(self) -> int:
        return self.proc.pid  # also its session id (start_new_session)

    def node_id(self, timeout_s: float = 60) -> str:
        """Its Ray node id (hex): Ray names per-node files of the session after it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = list(self.temp_dir.glob("session_latest/metrics_export_port_*"))
            if found:
                return found[0].name.rsplit("_", 1)[1]
            time.sleep(0.25)
        raise AssertionError(f"no node id under {self.temp_dir} after {timeout_s} s")

    def kill(self) -> None:
        """SIGKILL the whole node as a lost machine: the raylet first (so it cannot report its
        workers' deaths to the GCS), then the rest of its session (workers, agents)."""
        for pid in session_members(self.proc.pid):
            with contextlib.suppress(OSError):
                if b"/raylet" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]:
                    os.kill(pid, signal.SIGKILL)
        kill_session(self.proc.pid)


@contextlib.contextmanager
def started_worker_node(
    head: Head, num_cpus: int, num_gpus: int = 0, resources: dict[str, float] | None = None
) -> Iterator[Node]:
    """A raylet joining ``head`` (`ray start --address`) with its own temp dir and ports.
    ``num_gpus`` and ``resources`` are logical (Ray schedules by them; no device is touched): a GPU
    node as the driver plans for it, e.g. ``{"accelerator_type:H200": 1}``."""
    temp_dir = Path(tempfile.mkdtemp(prefix="tb-node-", dir="/tmp"))  # short: Unix socket paths
    ports, _ = port_args(NODE_PORT_FLAGS)
    command = [
        str(BIN / "ray"),
        "start",
        "--address",
        head.gcs_address,
        "--block",
        "--num-cpus",
        str(num_cpus),
        "--num-gpus",
        str(num_gpus),
        "--temp-dir",
        str(temp_dir),
        *ports,
    ]
    if resources:
        command += ["--resources", json.dumps(resources)]
    with (temp_dir / "node.log").open("wb") as log:
        proc = subprocess.Popen(command, env=head.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield Node(proc, temp_dir)
    finally:
        kill_session(proc.pid)
        proc.wait(timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)
