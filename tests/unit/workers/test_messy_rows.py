"""Prompts as users' data has them, through one RenderWorker shard (no Ray): each row once, ok or
a named error, its tar JSON member readable, its prompt kept byte for byte in metadata."""

import hashlib
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq

from tests.helpers import read_metadata
from tests.unit.workers.test_actor import resolved_spec
from turbobatch.output.shard import Shard
from turbobatch.workers.actor import RenderWorker

MESSY = [
    "",  # empty: an unconditional image
    "   \t\n ",  # whitespace only
    "nul\x00byte and \x1b[31m escape",  # control characters
    "مرحبا بالعالم",  # right to left
    "e\u0301\u0301\u0301 zalgo ̷̢̛̛",  # combining marks
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🐱‍👤 👩🏽‍🚀",  # astral plane, ZWJ sequences
    "x" * 200_000,  # far over 77 tokens
    None,  # a null prompt: an error row
]


def test_messy_prompts_each_end_in_one_row(tmp_path):
    data = tmp_path / "messy.parquet"
    # Dictionary-encoded, one row per row group: a layout Spark and pandas both produce.
    pq.write_table(pa.table({"prompt": pa.array(MESSY).dictionary_encode()}), data, row_group_size=1)
    spec = resolved_spec(tmp_path / "out", shard_size=len(MESSY))
    marker = RenderWorker(spec).render_shard(Shard(0, f"file://{data}", 0, len(MESSY), 0, 9))
    assert (marker["rows"], marker["ok"], marker["error"]) == (len(MESSY), len(MESSY) - 1, 1)
    rows = read_metadata(tmp_path / "out")
    assert [r["prompt"] for r in rows] == MESSY  # stored exactly, NUL and all
    assert [r["status"] for r in rows] == ["ok"] * (len(MESSY) - 1) + ["error"]
    assert rows[-1]["error"] == "prompt is null"
    assert [r["truncated"] for r in rows[:-1]] == [False] * 6 + [True]
    with tarfile.open(tmp_path / "out" / "shards" / "000000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    for row in rows[:-1]:
        assert json.loads(members[f"{row['key']}.json"])["prompt"] == row["prompt"]
        assert members[row["image"]][:8] == b"\x89PNG\r\n\x1a\n"


def test_three_images_per_messy_prompt_each_once_with_unique_keys(tmp_path):
    """--images-per-prompt 3: every row makes 3 metadata rows (the null prompt 3 error rows), with
    keys <row key>_<j>, seeds job seed + global_index * 3 + j, and one tar image per ok one."""
    from turbobatch.jobs.prepare.inputs import scan_inputs
    from turbobatch.jobs.prepare.plan import make_plan

    data = tmp_path / "messy.parquet"
    pq.write_table(pa.table({"prompt": pa.array(MESSY).dictionary_encode()}), data, row_group_size=1)
    spec = resolved_spec(tmp_path / "out", shard_size=5, images_per_prompt=3, seed=100, height=32, width=32)
    plan = make_plan(scan_inputs(str(data)), spec.shard_size, 3)  # 24 images in shards of 5: rows cut in two
    worker = RenderWorker(spec)
    markers = [worker.render_shard(s) for s in plan]
    assert [m["rows"] for m in markers] == [5, 5, 5, 5, 4]
    assert (sum(m["ok"] for m in markers), sum(m["error"] for m in markers)) == (21, 3)
    rows = read_metadata(tmp_path / "out")
    assert [(r["global_index"], r["image_index"]) for r in rows] == [(g, j) for g in range(8) for j in range(3)]
    assert [r["key"] for r in rows] == [f"{g:09d}_{j}" for g in range(8) for j in range(3)]
    assert [r["seed"] for r in rows] == [100 + g * 3 + j for g in range(8) for j in range(3)]
    assert [r["prompt"] for r in rows] == [p for p in MESSY for _ in range(3)]  # stored exactly, each time
    assert [r["error"] for r in rows if r["status"] == "error"] == ["prompt is null"] * 3
    members, names = {}, []
    for path in sorted((tmp_path / "out" / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            names += [m.name for m in tar.getmembers()]
            members.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    assert len(names) == len(set(names)) == 2 * 21  # an image and a json per ok image, none twice across shards
    assert sorted(n for n in members if n.endswith(".json")) == sorted(
        f"{r['key']}.json" for r in rows if r["status"] == "ok"
    )
    images = [members[r["image"]] for r in rows if r["status"] == "ok"]
    assert len({hashlib.sha256(i).hexdigest() for i in images}) == 21  # 3 seeds per prompt: 3 different images
