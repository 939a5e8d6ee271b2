"""Where a model folder lives and what it holds, read on the driver before any actor starts.

``--model``, ``--vae`` and ``--controlnet`` name a diffusers folder in one of three places:

- local: a folder on this machine (or a tiny model's cache folder); actors load it in place;
- remote: any fsspec URL (``s3://bucket/models/sd-turbo/``, ``gs://...``), read with the input side's
  storage options; each node copies the files it needs once (models/cache.py);
- hub: a Hugging Face id; its revision is pinned to a commit here, so every node fetches the same
  files, once per node. With ``HF_HUB_OFFLINE`` set the listing comes from this machine's Hugging
  Face cache, and each node loads from its own, as diffusers does.

One listing per model (names, sizes, a content tag) is all the driver reads besides the configs;
it decides the variant (models/variants.py) and travels in the spec to the actors, which fetch
exactly those files and nothing else.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turbobatch.errors import JobError
from turbobatch.models.tiny import TINY_MODELS, tiny_model_path
from turbobatch.output.storage import Folder, check_endpoint, describe_error

LOCAL, REMOTE, HUB = "local", "remote", "hub"
_LOCAL_PROTOCOLS = ("file", "local")


@dataclass(frozen=True)
class ModelSource:
    flag: str  # model, vae or controlnet: the option that named it, for messages
    name: str  # as the user gave it
    kind: str  # LOCAL, REMOTE or HUB
    location: str  # local folder, fsspec URL (no trailing slash) or Hub repo id
    files: dict[str, dict[str, Any]]  # every file: relative name -> {"size", "etag"}
    revision: str | None = None  # the Hub commit every node fetches
    root: str | None = None  # a local folder to read it from here (local; a Hub id offline: its cached snapshot)
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def offline(self) -> bool:
        """A Hub id listed from this machine's cache: nodes load it from their own cache, uncopied."""
        return self.kind == HUB and self.root is not None

    def read_json(self, rel: str) -> dict[str, Any]:
        """A config file of the folder (``unet/config.json``); raises as the storage does."""
        if self.root is not None:
            return json.loads(Path(self.root, rel).read_text(encoding="utf-8"))
        if self.kind == REMOTE:
            return Folder(self.location, self.storage_options).read_json(rel)
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(self.location, rel, revision=self.revision)).read_text(encoding="utf-8"))

    def to_spec(self, variant: str, needed: list[str]) -> dict[str, Any]:
        """What an actor needs to fetch and load it (no storage options: those stay in the spec's
        own fields, redacted in spec.json)."""
        return {
            "kind": self.kind,
            "location": self.location,
            "revision": self.revision,
            "offline": self.offline,
            "variant": variant,
            "files": {n: self.files[n] for n in needed},
        }


def loads_in_place(source: dict[str, Any]) -> bool:
    """A resolved source (ModelSource.to_spec) every node loads where it is, uncopied: a local
    folder, or a Hub id read from each node's own cache offline."""
    return source["kind"] == LOCAL or bool(source.get("offline"))


def is_remote_url(name: str) -> bool:
    """An fsspec URL other than a local file one."""
    protocol, sep, _ = name.partition("://")
    return bool(sep) and protocol.lower() not in _LOCAL_PROTOCOLS


def cannot_load(flag: str, name: str, e: BaseException) -> JobError:
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return JobError(
        f"--{flag}: cannot load {name!r} ({type(e).__name__}: {first}); expected a Hugging Face id reachable "
        f"from here, a local diffusers folder, an fsspec URL of one (s3://bucket/models/sd-turbo/), or one of "
        f"{', '.join(TINY_MODELS)}"
    )


def open_source(flag: str, name: str, storage_options: dict[str, Any] | None = None) -> ModelSource:
    """List the model folder ``name`` (JobError naming ``--flag`` and the name when it cannot)."""
    if name in TINY_MODELS:
        return _local(flag, name, str(tiny_model_path(name)))
    if is_remote_url(name):
        return _remote(flag, name, dict(storage_options or {}))
    if name.lower().startswith("file://"):
        return _local(flag, name, name[len("file://") :])
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        return _local(flag, name, os.path.abspath(path))
    if name.startswith((".", "/", "~")) or os.path.exists(path):
        raise cannot_load(flag, name, FileNotFoundError(f"no folder {path}"))
    return _hub(flag, name)


def _local(flag: str, name: str, path: str) -> ModelSource:
    files = Folder(path).list_files()
    return ModelSource(flag, name, LOCAL, path, files, root=path)


def _remote(flag: str, name: str, options: dict[str, Any]) -> ModelSource:
    url = name.rstrip("/")
    try:
        check_endpoint(url, options)
        files = Folder(url, options).list_files()
    except Exception as e:  # noqa: BLE001 - missing bucket, denied, unreachable: all stop the job here
        raise JobError(f"--{flag}: cannot read {name}: {describe_error(e, url, options)}") from None
    if not files:
        raise JobError(
            f"--{flag}: {name} holds no files (a missing or empty folder); expected a diffusers folder "
            "with model_index.json or config.json"
        )
    return ModelSource(flag, name, REMOTE, url, files, storage_options=options)


def _hub(flag: str, name: str) -> ModelSource:
    """Pin the revision and list it; offline (or with the Hub unreachable), this machine's cache."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(name, files_metadata=True)
    except Exception as online_error:  # noqa: BLE001 - offline, unreachable, not found, gated, bad id
        snapshot = _cached_snapshot(name)
        if snapshot is None:  # not cached either: the online error says more
            raise cannot_load(flag, name, online_error) from None
        return ModelSource(
            flag, name, HUB, name, Folder(snapshot).list_files(), revision=Path(snapshot).name, root=snapshot
        )
    files = {
        s.rfilename: {"size": int(s.lfs.size if s.lfs else s.size or 0), "etag": s.lfs.sha256 if s.lfs else s.blob_id}
        for s in info.siblings or []
    }
    return ModelSource(flag, name, HUB, name, files, revision=info.sha)


def _cached_snapshot(repo_id: str) -> str | None:
    """The folder of this machine's Hugging Face cache holding the repo's cached files (main's
    snapshot), found by its config; None when not cached. (snapshot_download(local_files_only=True)
    would refuse a snapshot that diffusers downloaded only in part, which is every one of them.)"""
    from huggingface_hub import try_to_load_from_cache

    for config in ("model_index.json", "config.json"):
        try:
            path = try_to_load_from_cache(repo_id, config)
        except Exception:  # noqa: BLE001 - not a valid repo id
            return None
        if isinstance(path, str):
            return str(Path(path).parent)
    return None
