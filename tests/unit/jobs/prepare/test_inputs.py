import pyarrow as pa
import pytest

from tests.conftest import write_parquet
from turbobatch.errors import JobError
from turbobatch.jobs.prepare.inputs import check_columns, scan_inputs
from turbobatch.spec.job import JobSpec


def spec(**kw) -> JobSpec:
    return JobSpec(input="x", output="y", **kw)


def test_folder_lists_parquet_files_sorted_and_skips_markers(tmp_path):
    write_parquet(tmp_path / "b.parquet", {"prompt": ["b"]})
    write_parquet(tmp_path / "sub" / "a.parquet", {"prompt": ["a", "a2"]})
    write_parquet(tmp_path / "_tmp" / "c.parquet", {"prompt": ["hidden"]})
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / "notes.txt").write_text("not data")
    files = scan_inputs(str(tmp_path))
    assert [f.url.rsplit("/", 2)[-2:] for f in files] == [[tmp_path.name, "b.parquet"], ["sub", "a.parquet"]]
    assert [f.num_rows for f in files] == [1, 2]
    assert files[0].url.startswith("file://")


def test_glob_and_single_file(tmp_path):
    for name in ("p1.parquet", "p2.parquet", "q.parquet"):
        write_parquet(tmp_path / name, {"prompt": ["x"]})
    assert len(scan_inputs(str(tmp_path / "p*.parquet"))) == 2
    assert len(scan_inputs(str(tmp_path / "q.parquet"))) == 1


def test_missing_input_empty_glob_and_empty_folder(tmp_path):
    with pytest.raises(JobError, match="does not exist"):
        scan_inputs(str(tmp_path / "nope.parquet"))
    with pytest.raises(JobError, match="matches no files"):
        scan_inputs(str(tmp_path / "*.parquet"))
    with pytest.raises(JobError, match="holds no \\*.parquet files"):
        scan_inputs(str(tmp_path))


def test_a_file_that_is_not_parquet_is_named(tmp_path):
    bad = tmp_path / "prompts.parquet"
    bad.write_text("prompt\nhello\n")
    with pytest.raises(JobError, match=r"input: file://.*prompts.parquet is not a readable Parquet file"):
        scan_inputs(str(bad))


def test_no_rows_is_an_error(tmp_path):
    write_parquet(tmp_path / "e.parquet", {"prompt": pa.array([], pa.string())})
    with pytest.raises(JobError, match="has no rows"):
        scan_inputs(str(tmp_path))


def test_missing_prompt_column_names_the_column_and_lists_the_others(tmp_path):
    files = scan_inputs(str(write_parquet(tmp_path / "a.parquet", {"text": ["x"], "id": [1]})))
    with pytest.raises(JobError, match=r"--prompt-column: column 'prompt' is not in .*; its columns are: text, id"):
        check_columns(files, spec())


def test_prompt_column_of_wrong_type(tmp_path):
    files = scan_inputs(str(write_parquet(tmp_path / "a.parquet", {"prompt": [1, 2]})))
    with pytest.raises(JobError, match="has type int64; expected one of string"):
        check_columns(files, spec())


def test_default_seed_column_is_optional_but_a_named_one_is_required(tmp_path):
    files = scan_inputs(str(write_parquet(tmp_path / "a.parquet", {"prompt": ["x"]})))
    check_columns(files, spec())
    with pytest.raises(JobError, match="--seed-column: column 'my_seed' is not in"):
        check_columns(files, spec(seed_column="my_seed"))


def test_seed_column_of_text_type_is_rejected(tmp_path):
    files = scan_inputs(str(write_parquet(tmp_path / "a.parquet", {"prompt": ["x"], "seed": ["1"]})))
    with pytest.raises(JobError, match="--seed-column: column 'seed' .* has type string"):
        check_columns(files, spec())


def test_dictionary_encoded_and_large_string_prompts_are_accepted(tmp_path):
    prompts = pa.array(["a", "b", "a"]).dictionary_encode()
    write_parquet(tmp_path / "d.parquet", {"prompt": prompts})
    write_parquet(tmp_path / "l.parquet", {"prompt": pa.array(["x"], pa.large_string())})
    check_columns(scan_inputs(str(tmp_path)), spec())
