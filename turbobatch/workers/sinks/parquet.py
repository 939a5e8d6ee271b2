"""``--format parquet``: data/SSSSSS.parquet, the shard's images and their fields in one table.

One row per ok image, with the job's data schema (output/columns.data_schema): the image as a
Hugging Face `datasets` Image value (struct of ``bytes`` and ``path``), key, prompt, seed, the
kept columns and the other metadata fields. The schema carries the ``huggingface`` feature
metadata, so ``datasets.load_dataset("parquet", ...)`` decodes the column as images. Rows are
streamed out in row groups of ``ROW_GROUP_ROWS`` images, small enough for readers to stream;
the file appears whole (temp name + rename, or one upload) before the shard's done marker.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from turbobatch.output import layout
from turbobatch.output.columns import job_data_schema
from turbobatch.output.features import with_features_metadata
from turbobatch.output.shard import Shard
from turbobatch.output.storage import Folder
from turbobatch.spec.job import JobSpec
from turbobatch.workers.sinks.base import HashingWriter
from turbobatch.workers.sinks.encode import encode_image

ROW_GROUP_ROWS = 100  # images per row group: ~40 MB of 512x512 PNGs, what the Hub's viewer reads well


class DataParquetSink:
    def __init__(self, out: Folder, shard: Shard, spec: JobSpec, stack: contextlib.ExitStack) -> None:
        self.spec, self.stack, self.rel = spec, stack, layout.data_path(shard.shard_id)
        self.schema = with_features_metadata(job_data_schema(spec), images=("image",))
        self.stream = HashingWriter(stack.enter_context(out.atomic_writer(self.rel)))
        # Image bytes are compressed already and their min/max statistics would only bloat the footer.
        self.writer = pq.ParquetWriter(
            self.stream,
            self.schema,
            compression="snappy",
            write_statistics=[n for n in self.schema.names if n != "image"],
        )
        self.rows: list[dict[str, Any]] = []

    def submit(self, pool: ThreadPoolExecutor, image: np.ndarray, record: dict[str, Any]) -> Future[bytes]:
        record["image"] = f"{record['key']}.{self.spec.image_extension}"  # the Image value's path, as in a tar
        return pool.submit(encode_image, image, self.spec.image_format, self.spec.effective_quality)

    def add(self, record: dict[str, Any], data: bytes) -> None:
        self.rows.append({**record, "image": {"bytes": data, "path": record["image"]}})
        if len(self.rows) >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema), row_group_size=ROW_GROUP_ROWS)
            self.rows = []

    def close(self) -> dict[str, dict[str, Any]]:
        self._flush()
        self.writer.close()  # the footer; a shard without ok images gets a file with the schema and no rows
        self.stack.close()  # renames / uploads the file
        return {self.rel: self.stream.entry()}
