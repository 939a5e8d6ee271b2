"""End to end: what a run writes, read by the real consumer libraries (`webdataset`, `datasets`).

The job is the one a new user tried: 40 rows, shard size 20, negative prompts only in the
second shard, and kept input columns (one of them null in the whole first shard), so the two
shards differ in which columns are null. Every format must load as one table, declared by the
card, and the kept columns must equal the input's by global index.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from tests.conftest import write_parquet
from turbobatch.jobs.cli import render_main as main
from turbobatch.workers.sinks.parquet import ROW_GROUP_ROWS

pytestmark = pytest.mark.slow
SIZE = ["--height", "48", "--width", "40"]  # PIL size (40, 48)
N = 40
KEPT = ["label", "category", "tags", "box", "extra"]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> tuple[Path, list[dict]]:
    """40 rows; row 5 has a null prompt (an error row, which keeps its columns too)."""
    rows = [
        {
            "prompt": None if i == 5 else f"a photo of thing {i}",
            "neg": None if i < 20 else f"blurry {i}",
            "label": i % 3,
            "category": ["cat", "dog", "cow"][i % 3],
            "tags": [f"t{i}"] * (i % 2),
            "box": {"x": i / 10, "name": None if i % 4 else f"b{i}"},
            "extra": None if i < 20 else i * 0.5,
        }
        for i in range(N)
    ]
    schema = pa.schema(
        [
            ("prompt", pa.string()),
            ("neg", pa.string()),
            ("label", pa.int64()),
            ("category", pa.string()),
            ("tags", pa.list_(pa.string())),
            ("box", pa.struct([("x", pa.float64()), ("name", pa.string())])),
            ("extra", pa.float64()),
        ]
    )
    path = write_parquet(
        tmp_path_factory.mktemp("in") / "prompts.parquet",
        {c: [r[c] for r in rows] for c in schema.names},
        schema=schema,
    )
    return path, rows


def render(path: Path, out: Path, *extra: str) -> None:
    argv = [
        str(path),
        str(out),
        "--model",
        "tiny-sd-turbo",
        "--shard-size",
        "20",
        "--negative-prompt-column",
        "neg",
        *SIZE,
        *extra,
    ]
    assert main(argv) == 0


def load(path: str, tmp_path: Path, **kw) -> datasets.Dataset:
    """`datasets.load_dataset`, which must print no warning: no log record at warning level (the card's
    YAML once made every load say "Ignoring part of dataset_info") and no Python warning."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = datasets.load_dataset(path, split="train", cache_dir=str(tmp_path / "hf-cache"), **kw)
    finally:
        root.removeHandler(handler)
    assert [f"{r.name}: {r.getMessage()}" for r in records] == []
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    return ds


def assert_kept_as_input(row: dict, rows: list[dict]) -> None:
    expected = rows[row["global_index"]]
    assert {c: row[c] for c in KEPT} == {c: expected[c] for c in KEPT}, row["global_index"]


def test_tar_reads_in_webdataset_and_in_datasets_through_the_card(ray_cluster, prompts, tmp_path):
    path, rows = prompts
    out = tmp_path / "out"
    render(path, out, "--keep-columns", "*")  # every column but prompt and neg: the job's own
    tars = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    assert len(tars) == 2

    samples = list(wds.WebDataset(tars, shardshuffle=False).decode("pil"))
    assert len(samples) == N - 1
    assert {s["png"].size for s in samples} == {(40, 48)}
    assert len({tuple(sorted(s["json"])) for s in samples}) == 1  # the same fields in both shards, null or not
    for s in samples:
        assert_kept_as_input(s["json"], rows)
    nulls = {u.rsplit("/", 1)[-1]: {s["json"]["extra"] is None for s in samples if s["__url__"] == u} for u in tars}
    assert nulls == {"000000.tar": {True}, "000001.tar": {False}}  # the shards really differ in their nulls

    ds = load(str(out), tmp_path)  # README.md's configs and declared features: no inference, no cast
    assert ds.num_rows == N - 1
    assert isinstance(ds.features["png"], datasets.Image)
    assert ds.features["json"]["negative_prompt"] == datasets.Value("string")
    assert ds.features["json"]["extra"] == datasets.Value("float64")
    by_index = {r["json"]["global_index"]: r for r in ds}
    assert sorted(by_index) == [i for i in range(N) if i != 5]
    assert by_index[0]["png"].size == (40, 48)
    assert (by_index[0]["json"]["negative_prompt"], by_index[25]["json"]["negative_prompt"]) == (None, "blurry 25")
    for r in by_index.values():
        assert_kept_as_input(r["json"], rows)


def test_parquet_format_is_one_table_of_images_and_columns(ray_cluster, prompts, tmp_path):
    path, rows = prompts
    out = tmp_path / "out"
    render(path, out, "--format", "parquet", "--keep-columns", ",".join(KEPT))
    files = sorted((out / "data").glob("*.parquet"))
    assert [f.name for f in files] == ["000000.parquet", "000001.parquet"]
    # One schema per job: the same columns and types in every data and metadata file.
    assert pq.read_schema(files[0]) == pq.read_schema(files[1])
    metas = sorted((out / "metadata").glob("*.parquet"))
    assert pq.read_schema(metas[0]) == pq.read_schema(metas[1])
    assert all(pq.ParquetFile(f).metadata.row_group(0).num_rows <= ROW_GROUP_ROWS for f in files)

    ds = load("parquet", tmp_path, data_files=str(out / "data" / "*.parquet"))
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds.column_names[:4] == ["image", "key", "prompt", "seed"]
    assert ds.num_rows == N - 1
    for r in ds:
        assert r["image"].size == (40, 48)
        assert_kept_as_input(r, rows)
        assert r["status"] == "ok" and r["prompt"] == rows[r["global_index"]]["prompt"]

    card = load(str(out), tmp_path)  # through README.md
    assert card.num_rows == N - 1 and card.features == ds.features

    meta = load("parquet", tmp_path, data_files=str(out / "metadata" / "*.parquet"))
    assert meta.num_rows == N  # every row, ok or error, with its kept columns
    error = next(r for r in meta if r["status"] == "error")
    assert error["global_index"] == 5 and error["image"] is None
    for r in meta:
        assert_kept_as_input(r, rows)


def test_files_format_card_points_at_the_metadata(ray_cluster, prompts, tmp_path):
    path, rows = prompts
    out = tmp_path / "out"
    render(path, out, "--format", "files", "--keep-columns", "label")
    ds = load(str(out), tmp_path)
    assert ds.num_rows == N
    ok = [r for r in ds if r["status"] == "ok"]
    assert len(ok) == N - 1 and all((out / r["image"]).is_file() for r in ok)
    assert [r["label"] for r in sorted(ds, key=lambda r: r["global_index"])] == [r["label"] for r in rows]
    card = (out / "README.md").read_text()
    assert "images/SSSSSS/<key>.png" in card and json.dumps("label") in card
