"""Prompts as users' data has them, through one RenderWorker shard (no Ray): each row once, ok or
a named error, its tar JSON member readable, its prompt kept byte for byte in metadata."""

import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.plan import Shard
from tests.helpers import read_metadata
from tests.workers.test_actor import resolved_spec
from workers.actor import RenderWorker

MESSY = [
    "",                                    # empty: an unconditional image
    "   \t\n ",                            # whitespace only
    "nul\x00byte and \x1b[31m escape",     # control characters
    "مرحبا بالعالم",                        # right to left
    "e\u0301\u0301\u0301 zalgo ̷̢̛̛",          # combining marks
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🐱‍👤 👩🏽‍🚀",                     # astral plane, ZWJ sequences
    "x" * 200_000,                         # far over 77 tokens
    None,                                  # a null prompt: an error row
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
