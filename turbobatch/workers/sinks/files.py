"""``--format files``: one image file per row under ``images/SSSSSS/``."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from turbobatch.output import layout
from turbobatch.output.shard import Shard
from turbobatch.output.storage import TEMP_MARK, Folder
from turbobatch.spec.job import JobSpec
from turbobatch.workers.sinks.encode import encode_image


class FilesSink:
    """images/SSSSSS/<key>.<ext>, each written whole by the encode thread. The marker does not
    list them: the shard's metadata (which it does list) holds each image's sha256 and bytes."""

    def __init__(self, out: Folder, shard: Shard, spec: JobSpec) -> None:
        self.out, self.shard, self.spec = out, shard, spec
        if out.is_local:
            self._remove_temp_leftovers()

    def _remove_temp_leftovers(self) -> None:
        """Temp files a killed attempt at this shard left in its image folder (local disks only:
        object stores get whole PUTs, never temp objects)."""
        folder = layout.image_dir(self.shard.shard_id)
        for name in self.out.list_names(folder):
            if TEMP_MARK in name:
                self.out.remove_file(f"{folder}/{name}")

    def submit(self, pool: ThreadPoolExecutor, image: np.ndarray, record: dict[str, Any]) -> Future[bytes]:
        record["image"] = layout.image_path(self.shard.shard_id, record["key"], self.spec.image_extension)
        return pool.submit(self._encode_and_write, image, record["image"])

    def _encode_and_write(self, image: np.ndarray, rel: str) -> bytes:
        data = encode_image(image, self.spec.image_format, self.spec.effective_quality)
        self.out.write_bytes(rel, data)
        return data

    def add(self, record: dict[str, Any], data: bytes) -> None:
        pass  # already written by the encode thread

    def close(self) -> dict[str, dict[str, Any]]:
        return {}
