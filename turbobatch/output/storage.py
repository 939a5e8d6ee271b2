"""The one I/O entry point: a folder over fsspec (URL plus storage options).

Every read and write of job data goes through :class:`Folder`, so local paths, ``s3://``,
``gs://`` and friends behave the same. Writes are atomic: local files are written under a
temporary name and renamed; object stores get one whole PUT (or a completed multipart upload).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob as globlib
import inspect
import json
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from typing import IO, Any
from urllib.parse import urlsplit

import fsspec
import fsspec.asyn
from fsspec.implementations.local import LocalFileSystem

TEMP_MARK = ".tmp-"

# Object stores answer 503/SlowDown and drop connections now and then: botocore retries those
# with exponential backoff (s3fs adds its own retries for dropped connections). Users can
# override by passing their own config_kwargs.
S3_DEFAULTS: dict[str, Any] = {"config_kwargs": {"retries": {"max_attempts": 8, "mode": "standard"}}}
# Listings of name prefixes in flight at once (Folder.list_versions); botocore's pool holds 10 connections.
LIST_CONCURRENCY = 16


def open_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """``fsspec.core.url_to_fs`` with the project's defaults for object stores."""
    options = dict(storage_options or {})
    if url.startswith(("s3://", "s3a://")):
        options = {**S3_DEFAULTS, **options}
    return fsspec.core.url_to_fs(url, **options)


def describe_error(e: BaseException, url: str, storage_options: dict[str, Any] | None = None) -> str:
    """Name a storage failure as the user can act on it: bucket missing, access denied, unreachable."""
    text = f"{type(e).__name__}: {e}"
    detail = text.strip().splitlines()[0][:300]
    if isinstance(e, PermissionError) or any(
        code in text for code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden")
    ):
        return f"access denied to {url}; check the credentials in the storage options or environment ({detail})"
    if "NoSuchBucket" in text or "bucket does not exist" in text:
        return f"bucket {bucket_of(url)!r} does not exist ({detail})"
    if isinstance(e, (ConnectionError, TimeoutError)) or any(
        mark in text for mark in ("Could not connect", "Connect timeout", "ClientConnectorError", "Cannot connect")
    ):
        return f"endpoint unreachable for {url}: {endpoint_of(storage_options) or 'the default endpoint'} ({detail})"
    return detail


def check_endpoint(url: str, storage_options: dict[str, Any] | None = None, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not after a minute of retries, when a custom endpoint is unreachable.

    Raises ConnectionError naming the endpoint. Only for s3:// URLs with a custom endpoint.
    """
    endpoint = endpoint_of(storage_options) if url.startswith(("s3://", "s3a://")) else None
    if not endpoint:
        return
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except OSError as e:
        raise ConnectionError(f"Cannot connect to {endpoint}: {e.strerror or e}") from None


def bucket_of(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


def endpoint_of(storage_options: dict[str, Any] | None) -> str | None:
    options = storage_options or {}
    return (
        options.get("endpoint_url")
        or (options.get("client_kwargs") or {}).get("endpoint_url")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )


def version_of(info: dict[str, Any]) -> str | None:
    """What a listing says of a file that changes when it is rewritten: size, plus the S3 ETag, the GCS
    generation, or the local mtime and inode (a rename gives a new inode; an old one may be reused, hence
    mtime). None from a store whose listing has none of these: its files cannot be told apart from older ones."""
    tags = [info[k] for k in ("ETag", "etag", "generation", "mtime", "ino") if info.get(k) is not None]
    return ":".join(str(part).strip('"') for part in (info.get("size"), *tags)) if tags else None


class Folder:
    """A folder URL plus storage options; paths given to its methods are relative to it."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/") or url
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = open_fs(self.url, self.storage_options)
        self.root = self.root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"Folder({self.url!r})"

    @property
    def absolute_url(self) -> str:
        """The folder as a URL that means the same from any working directory."""
        return self.fs.unstrip_protocol(self.root) if self.is_local else self.url

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def display(self, rel: str = "") -> str:
        """A URL for messages (never includes storage options)."""
        return f"{self.url}/{rel}" if rel else self.url

    # -- reads -------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        self.fs.invalidate_cache(self.path(rel))  # another process may have written it
        return self.fs.exists(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def read_json_many(self, rels: list[str]) -> list[Any]:
        """Many small JSON files in one batched call (concurrent on object stores)."""
        if not rels:
            return []
        contents = self.fs.cat([self.path(rel) for rel in rels], **self.small_file_options())
        return [json.loads(contents[self.path(rel)]) for rel in rels]

    def read_bytes_many(self, rels: list[str]) -> dict[str, bytes | None]:
        """Many files in one batched call (concurrent on object stores): rel -> bytes, None for a file
        missing or unreadable."""
        if not rels:
            return {}
        contents = self.fs.cat([self.path(rel) for rel in rels], on_error="return", **self.small_file_options())
        return {rel: None if isinstance(data := contents.get(self.path(rel)), BaseException) else data for rel in rels}

    def small_file_options(self) -> dict[str, Any]:
        """Options for ``fs.cat`` of small files. s3fs asks each file's size first (a HEAD, unless a listing of
        its folder is cached) to decide whether to read it in parallel ranges: one GET is all a marker needs.
        Without this, status over 3,000 markers listed by prefix made 3,007 HEADs beside 3,002 GETs."""
        cat_file = getattr(self.fs, "_cat_file", None)
        takes_it = cat_file is not None and "max_concurrency" in inspect.signature(cat_file).parameters
        return {"max_concurrency": 1} if takes_it else {}

    def list_names(self, rel: str) -> list[str]:
        """Names (not paths) directly under ``rel``; empty if it does not exist. One listing."""
        self.fs.invalidate_cache(self.path(rel))  # listings are cached per process; resume needs fresh ones
        try:
            entries = self.fs.ls(self.path(rel), detail=False)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def list_versions(self, rel: str, prefixes: Sequence[str] = (), after: str | None = None) -> dict[str, str | None]:
        """Name -> version of each file directly under ``rel``: its size and what the store changes
        when the file is rewritten (S3 ETag, GCS generation, local mtime and inode). Empty if ``rel``
        does not exist.

        With ``prefixes`` or ``after`` on S3: one listing per prefix (names that start with it) and one of
        the names after ``after``, concurrently, instead of one listing paged 1,000 names at a time. The
        caller chooses them so that together they hold every name it looks for; elsewhere (local
        disks: 0.03 s for 10,000 names) one listing holds them all. Why: a listing's pages come one
        after another, each a round trip (on moto each page also sorts every name of the folder:
        100,000 done markers took 229 s to list, measured on a loaded machine).
        """
        if (prefixes or after is not None) and self.lists_by_prefix:
            return {name: version_of(info) for name, info in self._list_s3_prefixes(rel, prefixes, after).items()}
        self.fs.invalidate_cache(self.path(rel))
        try:
            entries = self.fs.ls(self.path(rel), detail=True)
        except FileNotFoundError:
            return {}
        itself = self.path(rel).rstrip("/")
        return {
            e["name"].rstrip("/").rsplit("/", 1)[-1]: version_of(e)
            for e in entries
            if e.get("type") != "directory" and e["name"].rstrip("/") != itself
        }

    @property
    def lists_by_prefix(self) -> bool:
        """Whether ``list_versions`` lists only the given name prefixes (S3); elsewhere it lists the whole folder."""
        return hasattr(self.fs, "_call_s3")

    def _list_s3_prefixes(self, rel: str, prefixes: Sequence[str], after: str | None) -> dict[str, dict[str, Any]]:
        """S3: name -> the listing's entry (Key, Size, ETag) for names under ``rel`` that start with one
        of ``prefixes`` or come after ``after``; LIST_CONCURRENCY listings at a time, each paged."""
        bucket, key, _ = self.fs.split_path(self.path(rel))
        base = f"{key}/" if key else ""
        limit = asyncio.Semaphore(LIST_CONCURRENCY)

        async def listing(**kwargs: Any) -> list[dict[str, Any]]:
            entries: list[dict[str, Any]] = []
            async with limit:
                while True:
                    page = await self.fs._call_s3("list_objects_v2", Bucket=bucket, Delimiter="/", **kwargs)
                    entries += page.get("Contents", [])
                    if not page.get("IsTruncated"):
                        return entries
                    kwargs["ContinuationToken"] = page["NextContinuationToken"]

        async def all_listings() -> list[list[dict[str, Any]]]:
            calls = [listing(Prefix=base + prefix) for prefix in prefixes]
            if after is not None:
                calls.append(listing(Prefix=base, StartAfter=base + after))
            return await asyncio.gather(*calls)

        try:
            pages = fsspec.asyn.sync(self.fs.loop, all_listings)
        except FileNotFoundError:
            return {}
        return {
            e["Key"][len(base) :]: {"size": e["Size"], "ETag": e.get("ETag")}
            for entries in pages
            for e in entries
            if len(e["Key"]) > len(base)
        }

    def list_sizes(self, rel: str) -> dict[str, int | None]:
        """Name -> size in bytes of each entry directly under ``rel`` (None for a folder); empty
        if ``rel`` does not exist. One listing."""
        self.fs.invalidate_cache(self.path(rel))
        try:
            entries = self.fs.ls(self.path(rel), detail=True)
        except FileNotFoundError:
            return {}
        itself = self.path(rel).rstrip("/")  # an object store's folder marker object, if any
        return {
            e["name"].rstrip("/").rsplit("/", 1)[-1]: None if e.get("type") == "directory" else int(e["size"])
            for e in entries
            if e["name"].rstrip("/") != itself
        }

    def open(self, rel: str) -> IO[bytes]:
        """A binary file to read (streamed: large objects are not loaded whole)."""
        return self.fs.open(self.path(rel), "rb")

    def list_files(self, rel: str = "") -> dict[str, dict[str, Any]]:
        """Every file below ``rel``, recursively (one listing call; paged on object stores): name
        relative to ``rel`` -> {"size", "etag"}. ``etag`` is whatever the store says changes with the
        content (S3 ETag, GCS md5, local mtime), or None; a missing folder lists empty."""
        base = self.path(rel).rstrip("/")
        self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        files: dict[str, dict[str, Any]] = {}
        for path, info in found.items():
            name = path[len(base) + 1 :] if path.startswith(base + "/") else ""
            if name and info.get("type", "file") != "directory":
                tag = next((info[k] for k in ("ETag", "etag", "md5Hash", "mtime", "LastModified") if info.get(k)), None)
                files[name] = {"size": int(info.get("size") or 0), "etag": None if tag is None else str(tag).strip('"')}
        return files

    def download(self, rel: str, local_path: str) -> None:
        """Copy one file to a local path (one GET on object stores)."""
        self.fs.get_file(self.path(rel), local_path)

    # -- writes ------------------------------------------------------------------------
    @contextlib.contextmanager
    def atomic_writer(self, rel: str) -> Iterator[IO[bytes]]:
        """A binary file that appears at ``rel`` whole, or not at all if the block raises."""
        if self.is_local:
            final = self.path(rel)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            tmp = f"{final}{TEMP_MARK}{uuid.uuid4().hex}"
            try:
                with open(tmp, "wb") as f:
                    yield f
                os.replace(tmp, final)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        else:
            with tempfile.NamedTemporaryFile(prefix="turbobatch-", suffix=".part") as f:
                yield f
                f.flush()
                self.fs.put_file(f.name, self.path(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.atomic_writer(rel) as f:
            f.write(data)

    def write_many(self, files: dict[str, bytes]) -> None:
        """Write many small files, each whole (object stores: one PUT each, concurrently)."""
        if self.is_local or not hasattr(self.fs, "_pipe_file"):
            for rel, data in files.items():
                self.write_bytes(rel, data)
        elif files:
            self.fs.pipe({self.path(rel): data for rel, data in files.items()})

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False).encode())

    def remove_file(self, rel: str) -> None:
        """Delete one file; a file already gone is fine (another process may have removed it)."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(rel))

    def remove_files(self, rels: list[str]) -> None:
        """Delete many files in one call (batched deletes on object stores); files already gone are fine."""
        if not rels:
            return
        try:
            self.fs.rm([self.path(rel) for rel in rels])
        except FileNotFoundError:  # another process removed one: remove the rest one by one
            for rel in rels:
                self.remove_file(rel)

    def abort_incomplete_uploads(self, dirs: tuple[str, ...]) -> int:
        """Abort the multipart uploads under ``dirs`` that were started and never completed.

        A writer killed mid-upload (a large tar goes up in parts) leaves one behind: never
        visible as an object, but stored and billed until aborted. S3 only (0 elsewhere); one
        listing (per 1,000 uploads) of the folder. Returns how many were aborted.
        """
        if not hasattr(self.fs, "call_s3"):
            return 0
        bucket, key, _ = self.fs.split_path(self.root)
        prefix = f"{key}/" if key else ""
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        aborted = 0
        while True:
            page = self.fs.call_s3("list_multipart_uploads", **params)
            for upload in page.get("Uploads", []):
                if upload["Key"][len(prefix) :].split("/", 1)[0] in dirs:
                    with contextlib.suppress(FileNotFoundError):  # completed or aborted meanwhile
                        self.fs.call_s3(
                            "abort_multipart_upload", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        aborted += 1
            if not page.get("IsTruncated"):
                return aborted
            params.update(KeyMarker=page["NextKeyMarker"], UploadIdMarker=page["NextUploadIdMarker"])

    def remove_tree(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.rm(self.path(rel), recursive=True)


def dataset_root(url: str, storage_options: dict[str, Any] | None = None) -> str:
    """The folder that relative paths in the data (control images) start from: INPUT itself
    when it is a folder, else its parent (for a glob, the folder before the first wildcard)."""
    fs, root = open_fs(url, storage_options)
    return fs.unstrip_protocol(base_folder(fs, root))


def base_folder(fs: fsspec.AbstractFileSystem, root: str) -> str:
    """INPUT's folder as a path of ``fs``: itself, its parent, or a glob's folder before the first wildcard."""
    if globlib.has_magic(root):
        magic = min(i for i, c in enumerate(root) if c in "*?[")
        base = root[:magic].rsplit("/", 1)[0]
    elif fs.isdir(root):
        base = root
    else:
        base = root.rsplit("/", 1)[0]
    return base.rstrip("/")
