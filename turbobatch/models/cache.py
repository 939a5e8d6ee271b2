"""One copy of a model folder per node: from any fsspec URL, or a Hub snapshot.

Every actor of a node needs the same weights; a hundred nodes downloading them from the Hub at once
meet its rate limits, and a private network has no Hub at all. So each node copies the files the
driver chose (models/variants.py: only the chosen variant's weights) once into
``$TURBOBATCH_CACHE/models/<name>-<variant>-<hash>/`` and its actors load that folder:

- a file lock (``fcntl.flock`` on ``.<key>.lock`` next to it) makes the actors of a node take
  turns: the first copies, the others wait and then find the copy complete;
- the copy is made in ``.<key>.staging`` and renamed into place, with a manifest of the files'
  names, sizes and content tags (S3 ETag, Hub sha256) written last: a copy cut short by a killed
  actor is never loaded (it has no manifest and is not at the final name), and the next holder of
  the lock deletes it and starts again (the kernel releases a dead process's lock);
- a later run reuses a copy whose manifest covers the files it needs, with the same sizes and
  tags; a changed source (new upload, new Hub commit) is copied again, reusing unchanged files.

Local folders (and Hub ids read from each node's own Hugging Face cache offline) load in place.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from turbobatch import faults
from turbobatch.models.source import HUB, REMOTE, loads_in_place
from turbobatch.models.tiny import cache_dir
from turbobatch.models.variants import hub_allow_patterns
from turbobatch.output.storage import Folder
from turbobatch.spec.resolved import ResolvedJob

MANIFEST = ".turbobatch-copy.json"
COPY_THREADS = 8  # files fetched at once (object stores serve parallel GETs faster than one)
COMPONENTS = ("model", "vae", "controlnet")
COPIED, CACHED, IN_PLACE = "copied", "cached", "in_place"


@dataclass(frozen=True)
class Fetched:
    """How one component reached this node, for the actor's start-up record."""

    component: str
    path: str  # what from_pretrained gets: a local folder (or a Hub id loaded from this node's cache)
    action: str  # COPIED (this process fetched files), CACHED (a complete copy was there) or IN_PLACE
    files: int
    bytes: int  # fetched now (COPIED), else the size of what loads
    seconds: float  # lock wait included
    waited_s: float  # of which waiting for another process's copy

    def to_marker(self) -> dict[str, Any]:
        record = asdict(self)
        record.pop("path")
        return {**record, "seconds": round(self.seconds, 3), "waited_s": round(self.waited_s, 3)}


def models_dir() -> Path:
    return cache_dir() / "models"


def fetch_all(spec: ResolvedJob) -> list[Fetched]:
    """Each component of a driver-resolved spec, fetched (or found) on this node; [] for a spec the
    driver did not resolve (tests, benchmarks: names load in place)."""
    extra = [c for c in spec.sources if c not in COMPONENTS]  # LoRAs ("lora:<name>", models/lora.py)
    return [fetch(c, spec.sources[c], spec.input_options()) for c in (*COMPONENTS, *extra) if c in spec.sources]


def fetch(component: str, source: dict[str, Any], storage_options: dict[str, Any] | None = None) -> Fetched:
    """A local folder holding ``source["files"]`` (a spec entry of ModelSource.to_spec)."""
    started = time.perf_counter()
    files: dict[str, dict[str, Any]] = source["files"]
    total = sum(f["size"] for f in files.values())
    if loads_in_place(source):
        return Fetched(component, source["location"], IN_PLACE, len(files), total, time.perf_counter() - started, 0.0)
    if source["kind"] not in (REMOTE, HUB):
        raise ValueError(f"unknown model source kind {source['kind']!r}")
    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(source)
    target = root / key
    with _locked(root / f".{key}.lock"):
        waited = time.perf_counter() - started
        if is_complete(target, files):
            return Fetched(component, str(target), CACHED, len(files), total, time.perf_counter() - started, waited)
        fetched = _copy(source, files, root, key, storage_options or {})
    return Fetched(component, str(target), COPIED, len(files), fetched, time.perf_counter() - started, waited)


def cache_key(source: dict[str, Any]) -> str:
    """``<name>-<variant>-<hash of kind, location, revision, variant>``: readable, never shared by
    two sources or two variants of one."""
    ident = json.dumps([source["kind"], source["location"], source.get("revision"), source["variant"]])
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", source["location"].rstrip("/").rsplit("/", 1)[-1])[:60] or "model"
    return f"{slug}-{source['variant']}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def is_complete(folder: Path, files: dict[str, dict[str, Any]]) -> bool:
    """The folder's manifest lists every one of ``files`` with the same size and tag, and each is
    on disk at that size (a copy missing its manifest is never complete)."""
    return len(unchanged(folder, files)) == len(files)


def unchanged(folder: Path, files: dict[str, dict[str, Any]]) -> list[str]:
    """The ``files`` the folder's manifest lists with the same size and tag and that are on disk at
    that size; none without a readable manifest."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return []
    return [rel for rel, meta in files.items() if manifest.get(rel) == meta and _size(folder / rel) == meta["size"]]


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock shared by this node's processes; a dead holder's lock is released by the kernel."""
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _copy(
    source: dict[str, Any], files: dict[str, dict[str, Any]], root: Path, key: str, storage_options: dict[str, Any]
) -> int:
    """Under the lock: build the copy in staging, manifest last, then rename it into place.
    Returns the bytes fetched (files unchanged since an older copy are linked, not fetched)."""
    target, staging = root / key, root / f".{key}.staging"
    shutil.rmtree(staging, ignore_errors=True)  # a dead process's partial copy: we hold the lock
    staging.mkdir()
    reusable = _reusable(target, files)
    for rel in reusable:
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(target / rel, staging / rel)
    missing = sorted(set(files) - set(reusable))
    need = sum(files[rel]["size"] for rel in missing)
    free = shutil.disk_usage(root).free
    if need > free:
        raise OSError(
            f"no room for the model copy under {root}: it needs {need / 2**30:.2f} GiB, "
            f"{free / 2**30:.2f} GiB are free; free space or set TURBOBATCH_CACHE to a larger disk"
        )
    if source["kind"] == REMOTE:
        _copy_remote(source["location"], missing, staging, storage_options)
    else:
        _download_hub(source["location"], source["revision"], missing, staging)
    for rel, meta in files.items():
        size = (staging / rel).stat().st_size if (staging / rel).exists() else None
        if size != meta["size"]:
            raise OSError(
                f"model copy of {source['location']}: {rel} has {size} bytes, the driver's listing said "
                f"{meta['size']}: the model changed during the job; run it again"
            )
    manifest = {
        "source": source["location"],
        "kind": source["kind"],
        "revision": source.get("revision"),
        "variant": source["variant"],
        "files": files,
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    old = root / f".{key}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)  # replaced whole; processes that loaded it keep their open files
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return need


def _reusable(target: Path, files: dict[str, dict[str, Any]]) -> list[str]:
    """Files an older complete copy already holds unchanged (same size and tag)."""
    return [rel for rel in unchanged(target, files) if files[rel].get("etag")]


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _copy_remote(url: str, names: list[str], staging: Path, storage_options: dict[str, Any]) -> None:
    """One GET per file, COPY_THREADS at a time, with the input side's storage options."""
    folder = Folder(url, storage_options)

    def get(rel: str) -> None:
        faults.before_model_file_copy()
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        folder.download(rel, str(staging / rel))

    with ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="model-copy") as pool:
        list(pool.map(get, names))


def _download_hub(repo_id: str, revision: str | None, names: list[str], staging: Path) -> None:
    """Exactly ``names`` of the pinned commit, into staging (not the Hugging Face cache: one copy)."""
    if not names:
        return
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # one bar per file per actor floods the driver's log
    snapshot_download(
        repo_id,
        revision=revision,
        local_dir=str(staging),
        allow_patterns=hub_allow_patterns(names),
        max_workers=COPY_THREADS,
    )
    shutil.rmtree(staging / ".cache", ignore_errors=True)  # huggingface_hub's local_dir bookkeeping
