"""ShardWriter's outputs in the job's schema: data Parquet row groups, kept columns, typed nulls."""

from __future__ import annotations

import io
import json
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from tests.unit.workers.test_actor import resolved_spec
from turbobatch.output import layout
from turbobatch.output.columns import data_schema, encode_schema, metadata_schema
from turbobatch.output.shard import Shard
from turbobatch.output.storage import Folder
from turbobatch.workers.batches import Rendered
from turbobatch.workers.rows import Row
from turbobatch.workers.sinks.parquet import ROW_GROUP_ROWS
from turbobatch.workers.writer import ShardWriter

KEPT = pa.schema([("label", pa.int64()), ("box", pa.struct([("x", pa.float64())])), ("tags", pa.list_(pa.string()))])


def write_shard(out, fmt: str, n: int, kept: dict) -> dict:
    """n rows, every 7th an error row; each row's kept values from ``kept(i)``."""
    spec = resolved_spec(
        out, shard_size=n, format=fmt, keep_columns="label,box,tags", kept_schema=encode_schema(KEPT), height=8, width=6
    )
    shard = Shard(3, "unused", 0, n, 0, 4)
    with ThreadPoolExecutor(2) as pool:
        with ShardWriter(Folder(str(out)), shard, spec, pool, max_pending=8) as writer:
            for i in range(n):
                row = Row(i, f"{i:04d}", f"p{i}", None, i, kept=kept(i))
                if i % 7 == 3:
                    row.error = "prompt is null"
                    writer.add_error(row)
                else:
                    writer.add_image(Rendered(row, np.full((8, 6, 3), i % 256, np.uint8), 1.0, False))
            return writer.commit({}, time.perf_counter())


def kept_of(i: int) -> dict:
    return {"label": i, "box": {"x": i / 2} if i % 2 else None, "tags": [str(i)] * (i % 3)}


def test_data_parquet_streams_row_groups_of_images_with_their_features(tmp_path):
    n = 2 * ROW_GROUP_ROWS + 60
    marker = write_shard(tmp_path, "parquet", n, kept_of)
    path = tmp_path / layout.data_path(3)
    assert set(marker["files"]) == {layout.data_path(3), layout.metadata_path(3)}
    assert marker["files"][layout.data_path(3)]["bytes"] == path.stat().st_size
    meta = pq.ParquetFile(path).metadata
    ok = n - len([i for i in range(n) if i % 7 == 3])
    assert meta.num_rows == marker["ok"] == ok
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [
        ROW_GROUP_ROWS,
        ROW_GROUP_ROWS,
        ok - 200,
    ]
    table = pq.read_table(path)
    assert table.schema.remove_metadata() == data_schema(KEPT)
    assert json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]["image"] == {"_type": "Image"}
    first = table.slice(0, 1).to_pylist()[0]
    assert first["image"]["path"] == "0000.png" and first["key"] == "0000" and first["label"] == 0
    assert Image.open(io.BytesIO(first["image"]["bytes"])).size == (6, 8)
    assert table.column("label").to_pylist() == [i for i in range(n) if i % 7 != 3]


def test_a_shard_without_images_still_has_its_data_file_with_the_schema(tmp_path):
    spec = resolved_spec(
        tmp_path, shard_size=1, format="parquet", keep_columns="label,box,tags", kept_schema=encode_schema(KEPT)
    )
    with (
        ThreadPoolExecutor(1) as pool,
        ShardWriter(Folder(str(tmp_path)), Shard(0, "u", 0, 1, 0, 4), spec, pool, 4) as w,
    ):
        w.add_error(Row(0, "0000", None, None, 0, error="prompt is null", kept=kept_of(0)))
        marker = w.commit({}, time.perf_counter())
    assert marker["ok"] == 0
    assert pq.read_table(tmp_path / layout.data_path(0)).schema.remove_metadata() == data_schema(KEPT)


def test_metadata_and_tar_json_carry_every_field_typed_whatever_the_values(tmp_path):
    """Shard a's kept values are all null, shard b's are set: same schema, same json keys."""
    write_shard(tmp_path / "a", "tar", 6, lambda i: {"label": None, "box": None, "tags": None})
    write_shard(tmp_path / "b", "tar", 6, kept_of)
    schemas = [pq.read_schema(tmp_path / d / layout.metadata_path(3)) for d in ("a", "b")]
    assert schemas[0] == schemas[1] and schemas[0].remove_metadata() == metadata_schema(KEPT)
    rows = pq.read_table(tmp_path / "b" / layout.metadata_path(3)).to_pylist()
    assert [(r["status"], r["label"], r["tags"]) for r in rows[2:4]] == [("ok", 2, ["2", "2"]), ("error", 3, [])]
    keys = set()
    for d in ("a", "b"):
        with tarfile.open(tmp_path / d / layout.tar_path(3)) as tar:
            keys |= {tuple(sorted(json.loads(tar.extractfile(m).read()))) for m in tar if m.name.endswith(".json")}
    assert keys == {tuple(sorted(metadata_schema(KEPT).names))}


def test_a_sweep_job_writes_its_sweep_columns_typed_in_every_file(tmp_path):
    """Two shards of a swept job, one holding only error images: both data and metadata files have
    the sweep_<name> columns with the job's types, and each image its own values."""
    from turbobatch.output.columns import job_data_schema, job_metadata_schema
    from turbobatch.spec.sampling import SamplingParams

    spec = resolved_spec(
        tmp_path,
        shard_size=4,
        format="parquet",
        prompt_template="{prompt} in {style}",
        sweep={"style": ["ink", "oil"], "steps": [1, 2]},
        height=8,
        width=8,
    )
    spec.validate()
    with ThreadPoolExecutor(2) as pool:
        for sid, errors in ((0, False), (1, True)):
            with ShardWriter(
                Folder(str(tmp_path)),
                Shard(sid, "unused", 0, 1, sid, 4, 4 * sid, 4 * sid + 4),
                spec,
                pool,
                max_pending=8,
            ) as writer:
                for c, (style, steps) in enumerate([("ink", 1), ("ink", 2), ("oil", 1), ("oil", 2)]):
                    row = Row(
                        sid,
                        f"{sid:04d}_{c}_0",
                        f"p in {style}",
                        None,
                        5,
                        combination=c,
                        params=SamplingParams(steps, 0.0, 8, 8),
                        swept={"style": style, "steps": steps},
                    )
                    if errors:
                        row.error = "prompt template: field {prompt} (the prompt column) is null in this row"
                        writer.add_error(row)
                    else:
                        writer.add_image(Rendered(row, np.zeros((8, 8, 3), np.uint8), 1.0, False))
                writer.commit({}, time.perf_counter())
    for folder, schema in (("data", job_data_schema(spec)), ("metadata", job_metadata_schema(spec))):
        for sid in (0, 1):
            assert pq.read_schema(tmp_path / folder / f"{sid:06d}.parquet").remove_metadata() == schema
    assert job_data_schema(spec).names[:6] == ["image", "key", "prompt", "seed", "sweep_style", "sweep_steps"]
    data = pq.read_table(tmp_path / "data" / "000000.parquet").to_pylist()
    assert [(r["sweep_style"], r["sweep_steps"], r["steps"], r["template"]) for r in data] == [
        ("ink", 1, 1, "{prompt} in {style}"),
        ("ink", 2, 2, "{prompt} in {style}"),
        ("oil", 1, 1, "{prompt} in {style}"),
        ("oil", 2, 2, "{prompt} in {style}"),
    ]
    errors = pq.read_table(tmp_path / "metadata" / "000001.parquet").to_pylist()
    assert [(r["status"], r["sweep_style"], r["combination"]) for r in errors] == [
        ("error", "ink", 0),
        ("error", "ink", 1),
        ("error", "oil", 2),
        ("error", "oil", 3),
    ]
