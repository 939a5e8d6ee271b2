"""The real-Ray half of tests/unit/test_install.py: what only a running cluster shows."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.unit.test_install import BIN


@pytest.mark.slow
def test_a_render_started_outside_the_checkout_works(tmp_path: Path) -> None:
    """The `turbobatch` command from another directory: the installed package, not the cwd, is found."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    data = REPO / "examples" / "prompts.parquet"
    result = subprocess.run(
        [
            str(BIN / "turbobatch"),
            "render",
            str(data),
            "out",
            "--model",
            "tiny-sd-turbo",
            "--shard-size",
            "25",
            "--height",
            "32",
            "--width",
            "32",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "shards: 2/2 committed" in result.stdout
    assert sorted(p.name for p in (tmp_path / "out" / "_done").iterdir()) == ["000000.json", "000001.json"]
