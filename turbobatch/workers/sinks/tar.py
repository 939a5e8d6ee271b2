"""``--format tar`` (the default): one WebDataset tar per shard."""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from turbobatch.output import layout
from turbobatch.output.shard import Shard
from turbobatch.output.storage import Folder
from turbobatch.spec.job import JobSpec
from turbobatch.workers.sinks.base import HashingWriter
from turbobatch.workers.sinks.encode import encode_image


class TarSink:
    """shards/SSSSSS.tar, streamed as images arrive: ``<key>.<ext>`` then ``<key>.json`` (every
    metadata field, null where empty), mtime 0 so a redone shard gives the same bytes."""

    def __init__(self, out: Folder, shard: Shard, spec: JobSpec, stack: contextlib.ExitStack) -> None:
        self.spec, self.stack, self.rel = spec, stack, layout.tar_path(shard.shard_id)
        self.stream = HashingWriter(stack.enter_context(out.atomic_writer(self.rel)))
        self.tar = tarfile.open(fileobj=self.stream, mode="w|", format=tarfile.PAX_FORMAT)

    def submit(self, pool: ThreadPoolExecutor, image: np.ndarray, record: dict[str, Any]) -> Future[bytes]:
        record["image"] = f"{record['key']}.{self.spec.image_extension}"
        return pool.submit(encode_image, image, self.spec.image_format, self.spec.effective_quality)

    def add(self, record: dict[str, Any], data: bytes) -> None:
        self._member(record["image"], data)
        self._member(f"{record['key']}.json", json.dumps(record, ensure_ascii=False, sort_keys=True).encode())

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self.tar.addfile(info, io.BytesIO(data))

    def close(self) -> dict[str, dict[str, Any]]:
        self.tar.close()
        self.stack.close()  # renames / uploads the tar
        return {self.rel: self.stream.entry()}
