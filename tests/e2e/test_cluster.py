"""The real-Ray half of tests/unit/jobs/run/test_cluster.py: what only a running cluster shows."""

import pytest

from tests.unit.jobs.run.test_cluster import PUBLISH_NODE_TYPES


@pytest.mark.slow
def test_an_autoscaler_whose_node_types_cannot_hold_an_actor_fails_the_job_at_once(tmp_path):
    """Where Ray publishes the node types (the autoscaler v2 writes them to the GCS, as done here
    by hand), an actor no node type holds fails the job before any actor starts, not at the stall
    timeout."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO, write_parquet
    from tests.raycluster import started_head

    data = write_parquet(tmp_path / "p.parquet", {"prompt": ["a", "b"]})
    with started_head(num_cpus=1) as head:
        env = {
            **head.env,
            "RAY_ADDRESS": head.gcs_address,
            "TURBOBATCH_CACHE": os.environ["TURBOBATCH_CACHE"],
            "HF_HUB_OFFLINE": "1",
        }
        subprocess.run([sys.executable, "-c", PUBLISH_NODE_TYPES], env=env, timeout=120, check=True)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "turbobatch",
                "render",
                str(data),
                str(tmp_path / "out"),
                "--model",
                "tiny-sd-turbo",
                "--worker-cpus",
                "2",
                "--stall-timeout",
                "3600",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert result.returncode == 2, result.stderr[-3000:]
    assert (
        "error: --worker-gpus / --worker-cpus: one actor needs {'CPU': 2}; no node type of this cluster has "
        "that (its node types: {'CPU': 1})"
    ) in result.stderr
    assert not (tmp_path / "out" / "_done").exists()
