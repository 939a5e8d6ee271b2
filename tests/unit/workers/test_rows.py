import pyarrow as pa

from tests.conftest import write_parquet
from turbobatch.output.shard import Shard
from turbobatch.spec.resolved import ResolvedJob
from turbobatch.workers.rows import ShardReader, rows_from_table


def read_shard_table(shard: Shard, spec: ResolvedJob):
    return ShardReader(spec).read(shard)


def shard(path, start, end, first_index=100) -> Shard:
    return Shard(0, f"file://{path}", start, end, first_index, 9)


def test_reads_exactly_the_shard_rows_across_odd_row_groups(tmp_path):
    path = write_parquet(
        tmp_path / "a.parquet", {"prompt": [f"p{i}" for i in range(23)], "extra": list(range(23))}, row_group_size=5
    )
    table = read_shard_table(shard(path, 7, 18), ResolvedJob(input="i", output="o"))
    assert table.column("prompt").to_pylist() == [f"p{i}" for i in range(7, 18)]
    assert table.column_names == ["prompt"]  # only the columns the job uses


def test_consecutive_shards_of_one_big_row_group_read_it_once(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", {"prompt": [f"p{i}" for i in range(30)]}, row_group_size=30)
    reader = ShardReader(ResolvedJob(input="i", output="o"))
    first = reader.read(shard(path, 0, 10))
    cached = reader._cache[2]
    second = reader.read(shard(path, 10, 20))
    assert reader._cache[2] is cached
    assert first.column("prompt").to_pylist() + second.column("prompt").to_pylist() == [f"p{i}" for i in range(20)]


def test_bad_rows_become_error_records_and_good_rows_get_seeds(tmp_path):
    spec = ResolvedJob(input="i", output="o", seed=1000)
    floats = pa.array([None, 5.0, -1.0, 2.0**63, 7.0, 7.5, float("nan"), float("inf")], pa.float64())
    path = write_parquet(tmp_path / "a.parquet", {"prompt": ["a", None, "c", "d", "e", "f", "g", "h"], "seed": floats})
    rows = rows_from_table(read_shard_table(shard(path, 0, 8), spec), shard(path, 0, 8), spec)
    assert [(r.key, r.seed, r.error) for r in rows] == [
        ("000000100", 1100, None),  # null seed: job seed + global index
        ("000000101", 5, "prompt is null"),
        ("000000102", None, "seed -1 is outside [0, 2**63)"),
        ("000000103", None, "seed 9223372036854775808 is outside [0, 2**63)"),
        ("000000104", 7, None),
        ("000000105", None, "seed 7.5 is not an integer"),
        ("000000106", 1106, None),  # NaN is pandas' null
        ("000000107", None, "seed inf is not an integer"),
    ]
    uints = pa.array([2**63 - 1, 2**63, None], pa.uint64())
    path = write_parquet(tmp_path / "b.parquet", {"prompt": ["a", "b", "c"], "seed": uints})
    rows = rows_from_table(read_shard_table(shard(path, 0, 3), spec), shard(path, 0, 3), spec)
    assert [(r.seed, r.error) for r in rows] == [
        (2**63 - 1, None),
        (None, "seed 9223372036854775808 is outside [0, 2**63)"),
        (1102, None),
    ]


def test_key_column_and_negative_prompts(tmp_path):
    spec = ResolvedJob(input="i", output="o", key_column="id", negative_prompt_column="neg")
    path = write_parquet(tmp_path / "a.parquet", {"prompt": ["a", "b"], "id": ["x/1", "y"], "neg": ["blurry", None]})
    rows = rows_from_table(read_shard_table(shard(path, 0, 2), spec), shard(path, 0, 2), spec)
    assert [(r.key, r.negative_prompt) for r in rows] == [("x_1", "blurry"), ("y", None)]


def test_rows_carry_their_kept_columns_cast_to_the_job_types(tmp_path):
    from turbobatch.output.columns import encode_schema

    path = write_parquet(
        tmp_path / "a.parquet",
        {
            "prompt": ["x", "y", None],
            "cat": pa.array(["u", None, "v"]).dictionary_encode(),
            "n": pa.array([None, None, None], pa.null()),
        },
    )
    kept = pa.schema([("cat", pa.string()), ("n", pa.int64())])
    spec = ResolvedJob(input="i", output="o", keep_columns="cat,n", kept_schema=encode_schema(kept))
    s = shard(path, 0, 3)
    table = ShardReader(spec).read(s)
    assert table.column_names == ["prompt", "cat", "n"]
    rows = rows_from_table(table, s, spec)
    assert [r.kept for r in rows] == [{"cat": "u", "n": None}, {"cat": None, "n": None}, {"cat": "v", "n": None}]
    assert rows[2].error == "prompt is null" and rows[2].kept == {"cat": "v", "n": None}  # error rows keep theirs


def test_per_row_sampling_columns_null_means_the_job_value_and_a_bad_value_fails_the_row(tmp_path):
    spec = ResolvedJob(
        input="i", output="o", steps_column="st", guidance_scale_column="g", width_column="w", height_column="h"
    )
    path = write_parquet(
        tmp_path / "a.parquet",
        {
            "prompt": ["a"] * 8,
            "st": pa.array([None, 4.0, 0, 2.5, None, None, None, None], pa.float64()),
            "g": pa.array([None, 1.5, None, None, float("nan"), None, None, None], pa.float64()),
            "w": pa.array([None, "64", None, None, None, "70", "wide", None], pa.string()),
            "h": pa.array([None, 32, None, None, None, None, None, 5000], pa.int64()),
        },
    )
    rows = rows_from_table(read_shard_table(shard(path, 0, 8), spec), shard(path, 0, 8), spec)
    assert [(r.overrides, r.error) for r in rows] == [
        ({}, None),  # nulls: the job's values
        ({"steps": 4, "guidance_scale": 1.5, "width": 64, "height": 32}, None),  # 4.0 steps, "64" as text: fine
        ({"steps": None}, "steps column 'st': 0 is out of range; expected an integer in [1, 100]"),
        ({"steps": None}, "steps column 'st': 2.5 is not an integer; expected an integer in [1, 100]"),
        ({}, None),  # NaN is pandas' null
        ({"width": None}, "width column 'w': 70 is not a multiple of 8 (the VAE needs it)"),
        ({"width": None}, "width column 'w': 'wide' is not an integer; expected an integer in [8, 4096]"),
        ({"height": None}, "height column 'h': 5000 is out of range; expected an integer in [8, 4096]"),
    ]


def test_template_columns_are_read_and_the_first_seed_leaves_room_for_n_images(tmp_path):
    spec = ResolvedJob(input="i", output="o", prompt_template="a {style} {prompt}", images_per_prompt=3, seed=10)
    path = write_parquet(
        tmp_path / "a.parquet",
        {"prompt": [None, "b"], "style": ["ink", None], "other": [1, 2], "seed": pa.array([None, 500], pa.int64())},
    )
    table = read_shard_table(shard(path, 0, 2), spec)
    assert table.column_names == ["prompt", "seed", "style"]
    rows = rows_from_table(table, shard(path, 0, 2), spec)
    # A null prompt is not the row's error here: the template says so for the fields it uses.
    assert [(r.fields, r.seed, r.error) for r in rows] == [
        ({"style": "ink", "prompt": None}, 10 + 100 * 3, None),
        ({"style": None, "prompt": "b"}, 500, None),
    ]
