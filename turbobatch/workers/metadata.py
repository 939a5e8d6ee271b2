"""metadata/SSSSSS.parquet: one row per image of a shard, ok or error, in the job's schema.

Each row starts as a record (a dict of every field, None where empty, plus the kept input
columns); the same record is a tar member's json and a data Parquet row. The file is written
with the job's one metadata schema (output/columns.metadata_schema), never with types inferred
from the values, so every shard's file has the same columns and types.
"""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from turbobatch.output import layout
from turbobatch.output.columns import job_metadata_schema
from turbobatch.output.shard import Shard
from turbobatch.output.storage import Folder
from turbobatch.spec.expand import SWEEP_PREFIX
from turbobatch.spec.job import JobSpec
from turbobatch.workers.row_images import image_reference
from turbobatch.workers.row_inputs import img2img_lora_fields
from turbobatch.workers.rows import Row
from turbobatch.workers.sinks.base import file_entry


def new_record(row: Row, shard: Shard, spec: JobSpec, status: str, **extra: Any) -> dict[str, Any]:
    """Every metadata field of ``row`` (one image; None where empty), its sweep values and kept
    columns, then ``extra``."""
    params = row.params or spec.sampling()
    record = {
        "key": row.key,
        "global_index": row.global_index,
        "image_index": row.image_index,
        "combination": row.combination,
        "shard": shard.shard_id,
        "prompt": row.prompt,
        "negative_prompt": row.negative_prompt,
        "template": spec.prompt_template,
        "seed": row.seed,
        "model": spec.model,
        "steps": params.steps,
        "guidance_scale": params.guidance_scale,
        "width": params.width,
        "height": params.height,
        "dtype": spec.dtype,
        "status": status,
        "error": None,
        "image": None,
        "sha256": None,
        "bytes": None,
        "render_ms": None,
        "truncated": None,
        "redecoded_fp32": None,
        "batch_size": None,
        "nan_count": None,
        "mean": None,
        "std": None,
        "dhash": None,
        "vae": spec.vae,
        "controlnet": spec.controlnet,
        "controlnet_scale": spec.controlnet_scale if spec.controlnet else None,
        "control_preprocess": spec.control_preprocess if spec.controlnet else None,
        "control_image": image_reference(row.control) if spec.controlnet else None,
    }
    record.update(img2img_lora_fields(row, spec))
    record.update({SWEEP_PREFIX + name: value for name, value in row.swept.items()})
    record.update(row.kept)
    record.update(extra)
    return record


def write_metadata(
    out: Folder, shard: Shard, spec: JobSpec, records: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Write the shard's records in image-index order (row, combination, j); returns the marker's
    entry for the file."""
    rows = sorted(records, key=lambda r: (r["global_index"], r["combination"], r["image_index"]))
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=job_metadata_schema(spec)), buf)
    data = buf.getvalue()
    rel = layout.metadata_path(shard.shard_id)
    out.write_bytes(rel, data)
    return {rel: file_entry(data)}
