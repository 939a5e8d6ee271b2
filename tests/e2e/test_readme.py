"""Every command in README.md runs here and does what the README says, so an example that stops
working fails CI instead of a reader.

The commands come from README.md itself (its ```bash blocks, and the ```python block that loads a
dataset), run in README order in one folder, as the README's own note on trying them says: the tiny
model at 32x32 in place of the model and size they name (`--model tiny-sd-turbo --height 32 --width
32`; a GPU plan keeps its model with `--weights random`, the same architecture without a download),
`--tiny` for the example inputs, and moto's S3 server on 127.0.0.1 for the S3 endpoints. The jobs
share one `ray start --head` (RAY_ADDRESS), except the plan made "before the cluster exists". What
the test checks is exit codes and the README's own claims (outputs, row counts, keys, prompts, sizes,
resumes that render nothing), never the wording of progress or summary lines.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, S3_SECRET
from tests.helpers import read_metadata
from tests.raycluster import Head, started_head

README = REPO / "README.md"
TINY = ["--model", "tiny-sd-turbo", "--height", "32", "--width", "32"]
SMALL_SIZES = {"512": "32", "768": "48"}  # sizes in --sweep width=/height= values, as the tiny model renders them
# The README's placeholder endpoint, replaced by moto's server.
README_ENDPOINT = "https://minio.internal:9000"

# README commands this test does not run, and why: one visible list. Matched at the command's start.
SKIPPED = {
    "make demo": "runs `make`, which sets up a venv; CI runs `make demo` twice itself",
    "make test": "runs the whole suite, this test included; CI runs it itself",
    "ray job submit": "needs a real Ray cluster with the job's S3 buckets (`ray up cluster.yaml`); "
    "tests/e2e/test_deploy.py submits renders to a local head",
}


# -- what the README holds ------------------------------------------------------------------------
def code_blocks(language: str, text: str | None = None) -> list[str]:
    """The bodies of the README's fenced blocks of ``language``, in order."""
    text = README.read_text() if text is None else text
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def shell_commands(block: str) -> list[list[str]]:
    """A bash block's commands as argv lists: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", block)
    return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


def readme_commands() -> list[list[str]]:
    return [argv for block in code_blocks("bash") for argv in shell_commands(block)]


def skip_reason(argv: list[str]) -> str | None:
    text = shlex.join(argv)
    return next((why for start, why in SKIPPED.items() if text.startswith(start)), None)


# -- how a README command runs here ----------------------------------------------------------------
def program(argv: list[str]) -> list[str]:
    """The README's programs as this test runs them: the venv's python; ``turbobatch`` is
    ``python -m turbobatch`` (the README says they are the same command), with the checkout's code."""
    name, rest = argv[0], argv[1:]
    if name in (".venv/bin/python", "python"):
        return [sys.executable, *rest]
    if name in (".venv/bin/turbobatch", "turbobatch"):
        return [sys.executable, "-m", "turbobatch", *rest]
    raise AssertionError(f"README command with a program this test does not know: {shlex.join(argv)}")


def is_render(argv: list[str]) -> bool:
    return "render" in argv and argv.index("render") <= 3


def is_gpu_plan(argv: list[str]) -> bool:
    return is_render(argv) and "cuda" in argv and "--dry-run" in argv


def without(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """``argv`` less each of ``flags`` and its value."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in flags:
            skip = True
        else:
            out.append(arg)
    return out


def substituted(argv: list[str], endpoint: str) -> list[str]:
    """The README's command with the tiny model, small sizes and the local S3 endpoint."""
    argv = [arg.replace(README_ENDPOINT, endpoint) for arg in program(argv)]
    if any(arg.endswith("make_prompts.py") for arg in argv):
        return [*argv, "--tiny"]
    if not is_render(argv):
        return argv
    if "cuda" in argv:
        return [*argv, "--weights", "random"]
    argv = [
        re.sub(
            r"^((?:width|height)=)(.*)$", lambda m: m[1] + ",".join(SMALL_SIZES.get(v, v) for v in m[2].split(",")), a
        )
        for a in argv
    ]
    return [*without(argv, ("--model", "--height", "--width")), *TINY]


def local_output(argv: list[str], cwd: Path) -> Path | None:
    """A render command's local OUTPUT folder (None: not a render, or an object store URL)."""
    name = output_of(argv) if is_render(argv) else None
    return None if name is None or "://" in name else cwd / name


def output_of(argv: list[str]) -> str | None:
    """The render command's OUTPUT (its second positional argument after ``render``)."""
    positional, i = [], argv.index("render") + 1
    while i < len(argv):
        if argv[i].startswith("--"):
            i += 1 if argv[i] in ("--dry-run", "--calibrate", "--overwrite") else 2
            continue
        positional.append(argv[i])
        i += 1
    return positional[1] if len(positional) > 1 else None


# -- the README's claims about each command ---------------------------------------------------------
@dataclass
class Ran:
    readme: list[str]  # the command as the README has it
    argv: list[str]  # as it ran
    result: subprocess.CompletedProcess
    cwd: Path
    done_before: dict[str, int] = field(default_factory=dict)

    @property
    def out(self) -> Path | None:
        return local_output(self.readme, self.cwd)


def done_markers(out: Path | None) -> dict[str, int]:
    """A local output's done markers and their mtimes: what a resume that renders nothing leaves alone."""
    if out is None or not (out / "_done").is_dir():
        return {}
    return {p.name: p.stat().st_mtime_ns for p in (out / "_done").iterdir()}


def check_render(ran: Ran) -> None:
    """Exit 0 (every shard committed); a rerun of a job already done renders nothing; a dry run
    writes nothing."""
    assert ran.result.returncode == 0, ran.result.stderr[-3000:]
    if "--dry-run" in ran.readme:
        assert ran.out is None or ran.done_before or not ran.out.exists(), f"the dry run wrote {ran.out}"
        return
    if ran.out is None:
        return
    after = done_markers(ran.out)
    assert after, f"{ran.out}: no shard committed"
    if ran.done_before:
        assert after == ran.done_before, "the same command again rendered committed shards again"


def check_variations(ran: Ran) -> None:
    """--images-per-prompt 4: keys <key>_0 .. <key>_3, every row four times."""
    rows = read_metadata(ran.out)
    inputs = pq.read_table(ran.cwd / "prompts").num_rows
    assert len(rows) == 4 * inputs and all(r["status"] == "ok" for r in rows)
    assert {r["key"].rsplit("_", 1)[1] for r in rows} == {"0", "1", "2", "3"}


def check_template(ran: Ran) -> None:
    """ "a {style} photo of a {subject}" with the row's style and subject."""
    subjects = pq.read_table(ran.cwd / "subjects.parquet").to_pylist()
    prompts = sorted(r["prompt"] for r in read_metadata(ran.out))
    assert prompts == sorted(f"a {s['style']} photo of a {s['subject']}" for s in subjects)


def check_grid(ran: Ran) -> None:
    """3 step counts x 2 sizes x 2 lenses per row, a swept template field without a column."""
    rows = read_metadata(ran.out)
    subjects = pq.read_table(ran.cwd / "subjects.parquet").num_rows
    assert len(rows) == 12 * subjects and all(r["status"] == "ok" for r in rows)
    assert {(r["steps"], r["width"]) for r in rows} == {(s, w) for s in (1, 2, 4) for w in (32, 48)}
    assert {r["prompt"].rsplit(", ", 1)[1] for r in rows} == {"35mm lens", "85mm lens"}


def check_per_row(ran: Ran) -> None:
    """Per-row steps and sizes from columns; null: the flag's value."""
    inputs = pq.read_table(ran.cwd / "prompts").to_pylist()
    rows = sorted(read_metadata(ran.out), key=lambda r: r["key"])
    assert [(r["steps"], r["width"], r["height"]) for r in rows] == [
        (i["steps"] or 1, i["w"] or 32, i["h"] or 32) for i in inputs
    ]


def check_inputs(ran: Ran) -> None:
    """The helper makes the inputs the README's examples read."""
    assert ran.result.returncode == 0, ran.result.stderr[-3000:]
    assert set(pq.read_table(ran.cwd / "prompts").column_names) >= {"prompt", "steps", "w", "h"}
    assert set(pq.read_table(ran.cwd / "subjects.parquet").column_names) >= {"subject", "style"}


def check_plan(ran: Ran) -> None:
    """A plan for a cluster not started yet estimates time, GPU-hours and cost."""
    assert ran.result.returncode == 0, ran.result.stderr[-3000:]
    assert re.search(r"GPU-hours", ran.result.stdout) and re.search(r"^cost: ", ran.result.stdout, re.MULTILINE), (
        ran.result.stdout
    )


# (text the README command contains, its checks beyond check_render), first match wins.
CLAIMS: list[tuple[str, list[Callable[[Ran], None]]]] = [
    ("make_prompts.py --inputs", [check_inputs]),
    ("--images-per-prompt 4", [check_render, check_variations]),
    ("--sweep", [check_render, check_grid]),
    ("--prompt-template", [check_render, check_template]),
    ("--steps-column", [check_render, check_per_row]),
    ("--gpu-kind", [check_plan]),
    ("render", [check_render]),
]


def checks_for(argv: list[str]) -> list[Callable[[Ran], None]]:
    text = shlex.join(argv)
    return next(checks for needle, checks in CLAIMS if needle in text)


# -- the shared Ray and S3 ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def aws_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The standard AWS environment the README's S3 example relies on: a `reader` profile, an endpoint."""
    folder = tmp_path_factory.mktemp("aws")
    (folder / "credentials").write_text(
        f"[reader]\naws_access_key_id = tb-reader\naws_secret_access_key = {S3_SECRET}\n"
    )
    (folder / "config").write_text("[profile reader]\nregion = us-east-1\n")
    return {"AWS_SHARED_CREDENTIALS_FILE": str(folder / "credentials"), "AWS_CONFIG_FILE": str(folder / "config")}


@pytest.fixture(scope="module")
def head(s3_endpoint: str, aws_files: dict[str, str]) -> Iterator[Head]:
    """One `ray start --head` for every job, started with the checkout on PYTHONPATH and the AWS
    environment (actors read credentials from their node's environment, as on a real cluster)."""
    env = {
        "PYTHONPATH": str(REPO),
        "AWS_ENDPOINT_URL_S3": s3_endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "tb-test-key",
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_EC2_METADATA_DISABLED": "true",
        **aws_files,
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        with started_head(num_cpus=2) as started:
            yield started


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@contextlib.contextmanager
def s3_buckets(endpoint: str, names: tuple[str, ...]) -> Iterator[object]:
    """The README's buckets on moto's server, emptied and removed afterwards."""
    import boto3
    import s3fs

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="tb-test-key",
        aws_secret_access_key=S3_SECRET,
    )
    for name in names:
        client.create_bucket(Bucket=name)
    fs = s3fs.S3FileSystem(
        key="tb-test-key", secret=S3_SECRET, client_kwargs={"endpoint_url": endpoint, "region_name": "us-east-1"}
    )
    try:
        yield fs
    finally:
        for name in names:
            fs.rm(name, recursive=True)


# -- the tests ---------------------------------------------------------------------------------------
def test_the_readme_lists_commands_and_every_skipped_one_is_still_there():
    commands = readme_commands()
    assert len(commands) >= 10, commands
    for start in SKIPPED:
        assert any(shlex.join(c).startswith(start) for c in commands), f"SKIPPED names {start!r}: not in README"
    for argv in commands:
        if skip_reason(argv) is None:
            program(argv)  # a program this test knows how to run
            assert checks_for(argv), argv


def test_shell_commands_join_continuations_and_drop_comments():
    block = "# a comment\nturbobatch render a b \\\n    --sweep 'x=1,2'  # why\n\nmake demo   # setup\n"
    assert shell_commands(block) == [["turbobatch", "render", "a", "b", "--sweep", "x=1,2"], ["make", "demo"]]
    assert substituted(["turbobatch", "render", "a", "b", "--model", "m", "--sweep", "width=512,768"], "E") == [
        sys.executable,
        "-m",
        "turbobatch",
        "render",
        "a",
        "b",
        "--sweep",
        "width=32,48",
        *TINY,
    ]
    assert output_of(["turbobatch", "render", "--config", "j.yaml", "in", "out/x", "--dry-run"]) == "out/x"


@pytest.mark.slow
def test_every_readme_command_runs_as_the_readme_says(head: Head, s3_endpoint: str, tmp_path: Path):
    """In README order, in one folder (the helper that makes the inputs first); then the README's
    Python that loads what the commands wrote."""
    (tmp_path / "examples").symlink_to(REPO / "examples")
    env = {**head.env, "RAY_ADDRESS": head.gcs_address, "HF_DATASETS_CACHE": str(tmp_path / ".hf-datasets")}
    commands = [c for c in readme_commands() if skip_reason(c) is None]
    commands.sort(key=lambda c: "--inputs" not in c)  # the inputs first; otherwise README order
    ran: list[str] = []
    skipped = [(shlex.join(c), skip_reason(c)) for c in readme_commands() if skip_reason(c)]
    with s3_buckets(s3_endpoint, ("prompts-bucket", "images-bucket")) as fs:
        for readme in commands:
            if any(a.startswith("s3://prompts-bucket/") for a in readme):
                fs.put(str(tmp_path / "prompts" / "part-0.parquet"), "prompts-bucket/prompts/part-0.parquet")
            argv = substituted(readme, s3_endpoint)
            # "Before the cluster exists": no RAY_ADDRESS, as on a laptop.
            job_env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"} if is_gpu_plan(readme) else env
            before = done_markers(local_output(readme, tmp_path))
            started = time.monotonic()
            result = run(argv, tmp_path, job_env)
            record = Ran(readme, argv, result, tmp_path, before)
            for check in checks_for(readme):
                try:
                    check(record)
                except AssertionError as e:
                    raise AssertionError(
                        f"README command: {shlex.join(readme)}\nran: {shlex.join(argv)}\n{e}\n"
                        f"stdout: {result.stdout[-2000:]}"
                    ) from None
            ran.append(f"{time.monotonic() - started:5.1f} s  {shlex.join(readme)}")
        fs.invalidate_cache()
        assert fs.ls("images-bucket/run-1/_done/"), "the S3 example committed nothing"
    print("README commands run:", *ran, "skipped:", *(f"{c}: {why}" for c, why in skipped), sep="\n  ")
    check_loading_snippet(tmp_path, env)


# -- the README's Python that loads a dataset --------------------------------------------------------
RECORD = """
import ast, json, sys
from PIL import Image

def describe(value):
    if hasattr(value, "num_rows"):  # datasets.Dataset
        first = value[0]
        return {"rows": value.num_rows, "image": any(isinstance(v, Image.Image) for v in first.values())}
    samples = list(value)  # webdataset.WebDataset
    return {"rows": len(samples), "image": any(isinstance(v, Image.Image) for v in samples[0].values())}

namespace, seen = {}, []
for node in ast.parse(open(sys.argv[1]).read()).body:
    exec(compile(ast.Module([node], []), "README.md", "exec"), namespace)
    if isinstance(node, ast.Assign):
        seen.append([node.targets[0].id, describe(namespace[node.targets[0].id])])
print(json.dumps(seen))
"""


def loading_snippet(tar_out: str, parquet_out: str) -> str:
    """The README's ```python block with OUT named: lines marked --format parquet read a parquet
    output, the others the tar output (the default format)."""
    [block] = [b for b in code_blocks("python") if "load_dataset" in b]
    return "\n".join(
        line.replace("OUT", parquet_out if "--format parquet" in line else tar_out) for line in block.splitlines()
    )


def check_loading_snippet(cwd: Path, env: dict[str, str]) -> None:
    """The README's loading code on what the first README command wrote (tar), and on the same job
    in --format parquet: every dataset loads with its rows, and images decode."""
    parquet = [sys.executable, "-m", "turbobatch", "render", "prompts/", "out-parquet/", "--format", "parquet", *TINY]
    assert (made := run(parquet, cwd, env)).returncode == 0, made.stderr[-3000:]
    (cwd / "snippet.py").write_text(loading_snippet("out", "out-parquet"))
    (cwd / "record.py").write_text(RECORD)
    result = run([sys.executable, "record.py", "snippet.py"], cwd, env)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    rows = pq.read_table(cwd / "prompts").num_rows
    assert [name for name, _ in seen] == ["ds", "ds", "meta", "samples"], seen
    assert all(d["rows"] == rows for _, d in seen), seen
    assert [d["image"] for _, d in seen] == [True, True, False, True], seen
