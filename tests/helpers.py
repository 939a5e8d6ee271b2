"""Readers for a finished output folder, shared by the worker and end-to-end tests."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image


def read_metadata(out: Path) -> list[dict]:
    rows = []
    for path in sorted((out / "metadata").glob("*.parquet")):
        rows += pq.read_table(path).to_pylist()
    return rows


def read_tar_images(out: Path) -> dict[str, np.ndarray]:
    """key -> decoded uint8 image, over every committed tar."""
    images = {}
    for path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                data = tar.extractfile(member).read()
                if ext == "json":
                    json.loads(data)
                else:
                    images[key] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return images


def plain_diffusers_image(pipe, prompt: str, seed: int, height: int, width: int, steps: int = 1) -> np.ndarray:
    """What a user gets from a plain diffusers call with the row's generator."""
    out = pipe(
        prompt,
        num_inference_steps=steps,
        guidance_scale=0.0,
        height=height,
        width=width,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    ).images
    return (out[0] * 255).round().astype(np.uint8)


def assert_within_one_level(actual: np.ndarray, expected: np.ndarray, what: str = "") -> None:
    """The determinism contract: an image is within 1 level (of 255) of a plain diffusers call at
    any batch size (only the kernels' summation order depends on the batch)."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    diff = np.abs(actual.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= 1, f"{what}: {int((diff > 1).sum())} values differ by more than 1 (max {diff.max()})"


def corrupt_parquet(path: Path, prompts: list[str]) -> Path:
    """A Parquet file whose footer is valid (planning succeeds) but whose data page is not
    (the worker's read raises): the shard fails, the job does not."""
    pq.write_table(pa.table({"prompt": prompts}), path, use_dictionary=False, compression="snappy")
    column = pq.ParquetFile(path).metadata.row_group(0).column(0)
    with path.open("r+b") as f:
        f.seek(column.data_page_offset + column.total_compressed_size // 2)
        f.write(b"\xff" * (column.total_compressed_size // 4))
    return path


def processes_titled(title: str, session: int | None = None, ancestor: int | None = None) -> list[int]:
    """PIDs whose command line starts with ``title`` (Ray names busy actors ray::Class.method),
    only those of ``session``, or below process ``ancestor``, if given: another Ray on the same
    machine (a benchmark, a second test run) must never lose a process to a test."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if not cmdline.startswith(title):
                continue
            pid = int(entry.name)
            if session is not None and pid not in session_members(session):
                continue
            if ancestor is not None and ancestor not in _ancestors(pid):
                continue
            pids.append(pid)
    return pids


def _ancestors(pid: int) -> list[int]:
    """Parent, grandparent, ... of ``pid`` (from /proc/PID/stat), up to init."""
    chain = []
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state: ppid
        chain.append(pid)
    return chain


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def kill_session(session_id: int) -> None:
    """SIGKILL every process of a session (as made by start_new_session), until none is left.

    Ray's processes run in process groups of their own, so killpg is not enough (an orphaned
    actor of a killed driver may still commit a shard)."""
    for _ in range(50):
        alive = [pid for pid in session_members(session_id) if pid != os.getpid()]
        if not alive:
            return
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise AssertionError(f"processes of session {session_id} survive SIGKILL: {alive}")


def session_members(session_id: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == session_id and fields[0] != "Z":  # field 6 of stat: the session id
                pids.append(int(stat.parent.name))
    return pids


# -- a committed output, checked whole ------------------------------------------------------
def image_digests(out: Path) -> dict[str, str]:
    """key -> sha256 of its image bytes, from every committed shard's metadata."""
    rows = read_metadata(out)
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)), "a key was written twice"
    return {r["key"]: r["sha256"] for r in rows}


def metadata_without_timings(out: Path) -> list[dict]:
    """Metadata rows minus render_ms, the one field that differs between two runs."""
    return [{k: v for k, v in row.items() if k != "render_ms"} for row in read_metadata(out)]


def assert_complete_and_clean(out: Path, shards: int, rows: int, images_per_row: int = 1) -> None:
    """Every shard committed, every row's images once, every object whole and marked, nothing left over."""
    from turbobatch.output.storage import TEMP_MARK

    done = sorted(p.name for p in (out / "_done").iterdir())
    assert done == [f"{i:06d}.json" for i in range(shards)]
    metadata = read_metadata(out)
    assert sorted(r["global_index"] for r in metadata) == [g for g in range(rows) for _ in range(images_per_row)]
    assert len({(r["global_index"], r["combination"], r["image_index"]) for r in metadata}) == rows * images_per_row
    # Every data object is whole: the bytes its done marker recorded, and nothing unmarked.
    for marker_path in (out / "_done").iterdir():
        for rel, expected in json.loads(marker_path.read_text())["files"].items():
            assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == expected["sha256"], rel
    data_files = {f"{p.parent.name}/{p.name}" for folder in ("shards", "metadata") for p in (out / folder).iterdir()}
    assert data_files == {rel for p in (out / "_done").iterdir() for rel in json.loads(p.read_text())["files"]}
    leftovers = [str(p) for p in out.rglob("*") if TEMP_MARK in p.name]
    assert leftovers == []
    assert not (out / "_failed").exists() or not any((out / "_failed").iterdir())


def done_count(out: Path) -> int:
    return len(list((out / "_done").glob("*.json"))) if (out / "_done").exists() else 0


# -- models with fp16 weight files -------------------------------------------------------------
def add_fp16_files(folder: Path) -> Path:
    """Save an fp16 twin of every weight file of a pipeline folder next to the plain one
    (``unet/diffusion_pytorch_model.fp16.safetensors``, ``text_encoder/model.fp16.safetensors``), as
    ``save_pretrained(variant="fp16")`` names them; configs and tokenizers stay as they are."""
    import shutil
    import tempfile

    from diffusers import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(folder)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        if module is None:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            module.to(torch.float16).save_pretrained(tmp, variant="fp16")
            for weights in Path(tmp).glob("*.fp16.safetensors"):
                shutil.copy(weights, folder / name / weights.name)
    return folder


def garble(paths: list[Path]) -> list[Path]:
    """Overwrite files with random bytes of the same size: whoever loads them fails."""
    for path in paths:
        path.write_bytes(os.urandom(path.stat().st_size))
    return paths


def weight_files(folder: Path, fp16: bool) -> list[Path]:
    """The fp16 (or the plain) safetensors files below ``folder``."""
    return sorted(p for p in folder.rglob("*.safetensors") if (".fp16." in p.name) == fp16)


def upload_folder(fs, folder: Path, url: str) -> str:
    """Put a local folder's files under ``url`` (s3fs); returns the URL."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fs.pipe(f"{url.removeprefix('s3://').rstrip('/')}/{path.relative_to(folder).as_posix()}", path.read_bytes())
    return url


def kill_driver_mid_run(
    command: list[str], out: Path, env: dict[str, str], cwd: Path, commits: int = 2, timeout: float = 300
) -> int:
    """Start a driver, SIGKILL it (and its session: its local Ray) once ``commits`` shards of
    ``out`` are committed; returns the shards committed when it died."""
    driver = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_for(lambda: done_count(out) >= commits, timeout, f"{commits} committed shards")
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    finally:
        time.sleep(1)
        kill_session(driver.pid)
    return done_count(out)
