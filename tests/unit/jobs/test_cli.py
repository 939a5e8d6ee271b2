"""The ``turbobatch`` command: its help, its errors, and usage lines that name the command the user typed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from turbobatch.errors import JobError
from turbobatch.jobs.cli import main as turbobatch
from turbobatch.jobs.cli import parse_render_command


def parse_render_spec(argv, prog="turbobatch render"):
    return parse_render_command(argv, prog)[0]


COMMAND_LINES = (
    "    render    render a Parquet prompt dataset",
    "    status    show where a job stands",
    "    verify    check an output folder's committed shards",
)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_describes_every_command_and_exits_0(flag, capsys):
    assert turbobatch([flag], prog="turbobatch") == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: turbobatch [-h] COMMAND ...") and err == ""
    for line in COMMAND_LINES:
        assert line in out
    assert "'turbobatch COMMAND --help' lists a command's options." in out


def test_no_command_prints_the_help_to_stderr_and_exits_2(capsys):
    assert turbobatch([], prog="turbobatch") == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("usage: turbobatch [-h] COMMAND ...")
    assert all(line in err for line in COMMAND_LINES)


def test_an_unknown_command_is_named(capsys):
    assert turbobatch(["rendr", "in", "out"], prog="turbobatch") == 2
    err = capsys.readouterr().err
    assert err.endswith("turbobatch: error: unknown command 'rendr'; choose from render, status, verify\n")


def test_a_subcommand_usage_names_the_command_typed(capsys):
    assert turbobatch(["render"], prog="python -m turbobatch") == 2
    assert "error: input: missing; usage: python -m turbobatch render INPUT OUTPUT [options]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        turbobatch(["status"], prog="turbobatch")
    assert e.value.code == 2 and capsys.readouterr().err.startswith("usage: turbobatch status [-h]")


def test_the_missing_argument_message_takes_the_prog():
    with pytest.raises(
        JobError,
        match=r"^output: missing; usage: turbobatch render INPUT OUTPUT \[options\] "
        r"\(or output: in the --config file\)",
    ):
        parse_render_spec(["in.parquet"], prog="turbobatch render")


def _run(*cmd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(list(cmd), capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_each_entry_point_names_itself():
    """The installed command, ``python -m turbobatch`` and ``python -m turbobatch render``."""
    script = str(Path(sys.executable).parent / "turbobatch")
    done = _run(script, "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: turbobatch [-h] COMMAND"), done.stderr
    done = _run(sys.executable, "-m", "turbobatch", "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m turbobatch [-h] COMMAND"), done.stderr
    done = _run(sys.executable, "-m", "turbobatch")
    assert done.returncode == 2 and done.stderr.startswith("usage: python -m turbobatch [-h] COMMAND")
    done = _run(script, "render")
    assert done.returncode == 2 and "usage: turbobatch render INPUT OUTPUT" in done.stderr, done.stderr
    done = _run(sys.executable, "-m", "turbobatch", "render")
    assert done.returncode == 2 and "usage: python -m turbobatch render INPUT OUTPUT" in done.stderr, done.stderr
