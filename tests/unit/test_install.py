"""Installing the project: one top-level import name (``turbobatch``), beside whatever our
dependencies install, Hugging Face's ``kernels`` (transformers >= 5.25) in particular."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from importlib.metadata import distributions
from importlib.util import find_spec
from pathlib import Path

import pytest

from tests.conftest import REPO

BIN = Path(sys.executable).parent
DATA_SUFFIXES = {".json", ".cu", ".cuh", ".h"}  # read at run time: throughput table, configs, CUDA sources


def top_level_names(names: list[str]) -> set[str]:
    """The importable top-level names among a distribution's file paths."""
    tops = set()
    for name in names:
        first = name.split("/", 1)[0]
        if first.endswith((".dist-info", ".data")) or first.startswith("__"):
            continue
        tops.add(first.removesuffix(".py") if "/" in name or first.endswith(".py") else first)
    return {t for t in tops if not t.endswith((".pth", ".so"))}


def test_the_wheel_holds_one_top_level_package_and_the_command(tmp_path: Path) -> None:
    """What `pip install .` puts into site-packages: turbobatch, its data files, the console script."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("turbobatch-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert top_level_names(names) == {"turbobatch"}, sorted(top_level_names(names))
    packaged = {str(p.relative_to(REPO)) for p in (REPO / "turbobatch").rglob("*") if p.suffix in DATA_SUFFIXES}
    assert packaged and packaged <= set(names), sorted(packaged - set(names))
    assert "turbobatch = turbobatch.jobs.cli:console_main" in entry_points


def test_no_installed_distribution_shares_our_import_name() -> None:
    """No package of the dependency tree provides `turbobatch`, and ours provides nothing else."""
    for dist in distributions():
        if (dist.metadata["Name"] or "").lower() == "turbobatch":
            continue
        assert "turbobatch" not in top_level_names([str(f) for f in dist.files or []]), dist.metadata["Name"]


def run_python(code: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("where", ["checkout", "elsewhere"])
def test_hugging_faces_kernels_and_ours_import_side_by_side(tmp_path: Path, where: str) -> None:
    """`import kernels` is Hugging Face's package wherever Python starts (the checkout's root
    included), and `turbobatch.kernels` is ours; a diffusers pipeline class imports beside both."""
    if find_spec("kernels") is None:
        pytest.skip("Hugging Face's kernels is not installed (transformers < 5.25)")
    site = sysconfig.get_paths()["purelib"]
    out = run_python(
        "import kernels, turbobatch.kernels as ours, turbobatch.workers.decode; "
        "from diffusers import StableDiffusionPipeline; "
        "print(kernels.__file__); print(ours.__file__); print(hasattr(kernels, 'CUDAProperties'))",
        cwd=REPO if where == "checkout" else tmp_path,
    )
    hf, ours, has_hf_api = out.split()
    assert hf.startswith(site) and "turbobatch" not in hf, hf
    assert Path(ours).resolve() == (REPO / "turbobatch" / "kernels" / "__init__.py").resolve(), ours
    assert has_hf_api == "True"


@pytest.mark.parametrize("folder", ["benchmarks", "examples", "requirements", "deploy"])
def test_no_script_shadows_an_installed_package(folder: str) -> None:
    """`python benchmarks/gpu.py` puts benchmarks/ first on sys.path, so a module there named like an
    installed package replaces it for every import in that process: benchmarks/kernels.py once hid
    Hugging Face's `kernels`, which peft imports (via diffusers' LoRA loaders), and gpu-check failed."""
    from importlib.metadata import packages_distributions

    installed = set(packages_distributions()) | set(sys.stdlib_module_names)
    modules = {p.stem for p in (REPO / folder).glob("*.py")} | {
        p.parent.name for p in (REPO / folder).glob("*/__init__.py")
    }
    assert not modules & installed, f"{folder}/ shadows installed packages: {sorted(modules & installed)}"


def test_python_dash_m_turbobatch_is_the_command(tmp_path: Path) -> None:
    """`python -m turbobatch` and the `turbobatch` script are one entry point."""
    for cmd in (
        [sys.executable, "-m", "turbobatch", "render", "--help"],
        [str(BIN / "turbobatch"), "render", "--help"],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert done.returncode == 0 and "--model" in done.stdout, (cmd, done.stderr[-2000:])
