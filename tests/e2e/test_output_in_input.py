"""The real-Ray half of tests/unit/jobs/prepare/test_output_in_input.py: what only a running cluster shows."""

from __future__ import annotations

import pytest

from tests.conftest import write_parquet
from tests.unit.jobs.prepare.test_output_in_input import TINY
from turbobatch.jobs.cli import render_main as main


@pytest.mark.slow
def test_a_glob_next_to_its_output_renders_and_resumes(ray_cluster, tmp_path, capsys):
    """`data/*.parquet` and `data/out`: the check lets it run, and the rerun sees the same input (the run's
    metadata/*.parquet files are not matched), so it resumes instead of stopping with "input added"."""
    write_parquet(tmp_path / "data" / "prompts.parquet", {"prompt": ["a fox", "a boat", "a cat"]})
    argv = [str(tmp_path / "data" / "*.parquet"), str(tmp_path / "data" / "out")]
    assert main([*argv, *TINY]) == 0
    assert main([*argv, *TINY]) == 0
    assert "shards: 2/2 committed (0 this run, 2 before" in capsys.readouterr().out
