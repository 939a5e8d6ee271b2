"""--keep-columns: resolved from the footers into the job's one schema, or a job error naming it."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tests.conftest import write_parquet
from turbobatch.errors import JobError
from turbobatch.jobs.cli import render_main as render
from turbobatch.jobs.prepare.inputs import scan_inputs
from turbobatch.jobs.run import render as render_module
from turbobatch.output.columns import (
    METADATA_SCHEMA,
    data_schema,
    kept_schema,
    kept_values,
    metadata_schema,
    with_kept_columns,
)
from turbobatch.spec.job import JobSpec
from turbobatch.spec.resolved import ResolvedJob


def resolve(root, **kw) -> ResolvedJob:
    spec = JobSpec(input=str(root), output="unused", **kw)
    spec.validate()
    spec, kept = with_kept_columns(scan_inputs(str(root)), spec)
    return ResolvedJob.of(spec, kept_schema=kept)


@pytest.fixture
def two_files(tmp_path):
    """Two files whose kept columns differ in layout, not in type; b's `extra` is all null."""
    root = tmp_path / "in"
    write_parquet(
        root / "a.parquet",
        {
            "prompt": ["x", "y"],
            "seed": pa.array([1, 2], pa.int64()),
            "label": pa.array([3, 4], pa.int32()),
            "category": pa.array(["cat", "dog"]).dictionary_encode(),
            "tags": [["a"], []],
            "box": [{"x": 1.0, "name": "n"}, None],
            "extra": pa.array([1.5, None], pa.float64()),
            "flag": [True, None],
        },
    )
    write_parquet(
        root / "b.parquet",
        {
            "prompt": ["z"],
            "seed": pa.array([None], pa.int64()),
            "label": pa.array([5], pa.int32()),
            "category": pa.array(["cow"], pa.large_string()),
            "tags": pa.array([["b", "c"]], pa.large_list(pa.string())),
            "box": [{"x": None, "name": "m"}],
            "extra": pa.array([None], pa.null()),
            "flag": [False],
        },
    )
    return root


def test_star_keeps_every_unused_column_with_one_type_across_files(two_files):
    spec = resolve(two_files, keep_columns="*")
    kept = kept_schema(spec)
    assert spec.keep_columns == "label,category,tags,box,extra,flag"  # prompt and seed are the job's
    assert kept == pa.schema(
        [
            ("label", pa.int32()),
            ("category", pa.string()),
            ("tags", pa.list_(pa.string())),
            ("box", pa.struct([("x", pa.float64()), ("name", pa.string())])),
            ("extra", pa.float64()),
            ("flag", pa.bool_()),
        ]
    )
    # Every shard writes exactly the job's schema: the written columns, then the kept ones.
    assert metadata_schema(kept).names == [*METADATA_SCHEMA.names, *kept.names]
    assert data_schema(kept).names[:8] == ["image", "key", "prompt", "seed", "label", "category", "tags", "box"]
    assert "image" in METADATA_SCHEMA.names and data_schema(kept).field("image").type == pa.struct(
        [("bytes", pa.binary()), ("path", pa.string())]
    )


def test_kept_values_are_cast_to_the_job_types(two_files):
    import pyarrow.parquet as pq

    kept = kept_schema(resolve(two_files, keep_columns="category,tags,extra"))
    values = kept_values(pq.read_table(two_files / "b.parquet"), kept)
    assert values == [{"category": "cow", "tags": ["b", "c"], "extra": None}]
    table = pa.Table.from_pylist(values, schema=kept)  # what a shard of file b writes
    assert table.schema == kept


def test_no_keep_columns_means_an_empty_kept_schema(two_files):
    spec = resolve(two_files)
    assert (spec.keep_columns, spec.kept_schema, kept_schema(spec).names) == (None, None, [])


def test_columns_the_output_carries_under_their_own_name_are_not_copied_twice(two_files):
    spec = resolve(two_files, keep_columns="prompt,seed,label")
    assert spec.keep_columns == "label"  # prompt and seed are in every row already


def test_a_missing_column_is_named_with_the_valid_ones(two_files):
    with pytest.raises(
        JobError,
        match=r"--keep-columns: column 'nope' is not in file://.*a\.parquet; its columns "
        r"are: prompt, seed, label, category",
    ):
        resolve(two_files, keep_columns="label,nope")


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"keep_columns": "status"}, "status"),
        ({"keep_columns": "steps"}, "steps"),  # named explicitly: the user asked for it, so it fails
        ({"keep_columns": "key"}, "key"),  # not the key column: the output's key is turbobatch's
        (
            {"keep_columns": "seed", "seed_column": "s"},
            "seed",
        ),  # not the seed column: the output's seed is the one used
        ({"keep_columns": "__key__"}, "__key__"),  # datasets' own column for tar samples
    ],
)
def test_a_name_turbobatch_writes_is_a_clash(tmp_path, kw, name):
    write_parquet(
        tmp_path / "a.parquet",
        {
            "prompt": ["x"],
            "label": [1],
            "status": ["new"],
            "key": ["k"],
            "seed": [5],
            "s": [6],
            "__key__": ["w"],
            "steps": [4],
        },
    )
    with pytest.raises(
        JobError,
        match=rf"--keep-columns: column '{name}' of file://.*a\.parquet has the name of a "
        r"column turbobatch writes; rename it in the input, or keep other columns "
        r"\(columns that can be kept: label\b",
    ):
        resolve(tmp_path, **kw)


def test_star_skips_the_names_turbobatch_writes_with_one_note(tmp_path, capsys):
    write_parquet(
        tmp_path / "a.parquet", {"prompt": ["x"], "label": [1], "steps": [4], "status": ["new"], "sweep_width": [3]}
    )
    spec = resolve(tmp_path, keep_columns="*", sweep={"width": [32, 48]})
    assert spec.keep_columns == "label"
    err = capsys.readouterr().err
    assert err == (
        "turbobatch: --keep-columns '*' does not keep input columns steps, status, sweep_width: turbobatch "
        "writes a column of those names (rename them in the input to keep them)\n"
    )


def test_star_says_nothing_when_every_unused_column_is_kept(two_files, capsys):
    resolve(two_files, keep_columns="*")
    assert capsys.readouterr().err == ""


def test_the_star_note_comes_once_per_job(tmp_path, monkeypatch, capsys):
    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop  # the checks are done: the job would join Ray now

    monkeypatch.setattr(render_module, "ray_session", stop)
    data = write_parquet(tmp_path / "p.parquet", {"prompt": ["x"], "steps": [4], "label": [1]})
    with pytest.raises(Stop):
        render([str(data), str(tmp_path / "out"), "--model", "tiny-sd-turbo", "--keep-columns", "*"])
    err = capsys.readouterr().err
    assert (
        err.count(
            "--keep-columns '*' does not keep input column steps: turbobatch writes a column of that "
            "name (rename it in the input to keep it)"
        )
        == 1
    )


def test_a_column_missing_from_one_of_several_files_names_that_file(tmp_path):
    write_parquet(tmp_path / "a.parquet", {"prompt": ["x"], "label": [1]})
    write_parquet(tmp_path / "b.parquet", {"prompt": ["y"]})
    with pytest.raises(JobError, match=r"column 'label' is not in file://.*b\.parquet; its columns are: prompt$"):
        resolve(tmp_path, keep_columns="*")


def test_conflicting_types_name_both_files(tmp_path):
    write_parquet(tmp_path / "a.parquet", {"prompt": ["x"], "label": pa.array([None], pa.null())})
    write_parquet(tmp_path / "b.parquet", {"prompt": ["y"], "label": [1]})
    write_parquet(tmp_path / "c.parquet", {"prompt": ["z"], "label": ["one"]})
    with pytest.raises(
        JobError,
        match=r"column 'label' has type int64 in file://.*b\.parquet but string in "
        r"file://.*c\.parquet; a kept column must have one type",
    ):
        resolve(tmp_path, keep_columns="label")


def test_a_type_json_cannot_carry_is_refused(tmp_path):
    write_parquet(tmp_path / "a.parquet", {"prompt": ["x"], "when": pa.array([0], pa.timestamp("s"))})
    with pytest.raises(
        JobError,
        match=r"column 'when' in .* has type timestamp\[ms\]; a kept column must hold "
        r"integers, floats, strings",
    ):
        resolve(tmp_path, keep_columns="when")


def test_yaml_cannot_set_the_resolved_schema():
    with pytest.raises(JobError, match="--config: unknown field 'kept_schema'"):
        JobSpec.from_sources({"input": "i", "output": "o", "kept_schema": "x"}, {})
    assert (
        JobSpec.from_sources({"input": "i", "output": "o", "keep_columns": ["a", "b", "a"]}, {}).keep_columns == "a,b"
    )


def test_keep_columns_is_an_output_field():
    assert "keep_columns" in JobSpec.OUTPUT_FIELDS
    assert JobSpec(keep_columns="a").output_hash() != JobSpec(keep_columns="b").output_hash()


def test_bad_kept_columns_stop_the_job_before_any_actor(tmp_path, monkeypatch, capsys):
    def forbidden(*args, **kwargs):
        raise AssertionError("Ray was joined for a bad job")

    monkeypatch.setattr(render_module, "ray_session", forbidden)  # before Ray: before any actor
    data = write_parquet(tmp_path / "p.parquet", {"prompt": ["x"], "image": ["a.png"]})
    assert render([str(data), str(tmp_path / "out"), "--model", "tiny-sd-turbo", "--keep-columns", "image"]) == 2
    assert "--keep-columns: column 'image' of file://" in capsys.readouterr().err
    assert not (tmp_path / "out" / "_done").exists()


def test_a_resume_with_other_kept_columns_is_a_changed_job(two_files):
    from turbobatch.jobs.prepare.plan import describe_changes, fingerprint

    files = scan_inputs(str(two_files))
    first, again = (
        resolve(two_files, keep_columns="*"),
        resolve(two_files, keep_columns="label,category,tags,box,extra,flag"),
    )
    assert describe_changes(fingerprint(files, first), fingerprint(files, again)) == []  # '*' means those names
    assert describe_changes(
        fingerprint(files, first), fingerprint(files, resolve(two_files, keep_columns="label"))
    ) == ["--keep-columns: 'label,category,tags,box,extra,flag' -> 'label'"]
