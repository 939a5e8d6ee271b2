import pytest

from tests.conftest import write_parquet
from turbobatch.errors import JobError
from turbobatch.jobs.prepare.inputs import scan_inputs
from turbobatch.jobs.prepare.unique_keys import check_unique_keys
from turbobatch.output.keys import MAX_KEY_CHARS, index_key, sanitize_key


@pytest.mark.parametrize(
    "raw, key",
    [
        ("abc-1", "abc-1"),
        ("../etc/passwd", "___etc_passwd"),
        ("a/b", "a_b"),
        ("x.png", "x_png"),
        ("tab\there", "tab_here"),
        ("日本", "日本"),
        (42, "42"),
        ("", None),
        (None, None),
    ],
)
def test_sanitize_key(raw, key):
    assert sanitize_key(raw) == key


def test_long_keys_are_cut_but_stay_unique():
    a, b = sanitize_key("k" * 500 + "a"), sanitize_key("k" * 500 + "b")
    assert len(a) == MAX_KEY_CHARS and a != b


def test_index_key_is_zero_padded():
    assert index_key(42, 9) == "000000042"


def test_duplicate_keys_after_sanitizing_stop_the_job(tmp_path):
    write_parquet(tmp_path / "a.parquet", {"prompt": ["x", "y"], "id": ["a/b", "c"]})
    write_parquet(tmp_path / "b.parquet", {"prompt": ["z"], "id": ["a_b"]})
    with pytest.raises(
        JobError,
        match=r"--key-column: 'id' value 'a_b' \(key 'a_b'\) at .*b.parquet row 0 duplicates .*a.parquet row 0",
    ):
        check_unique_keys(scan_inputs(str(tmp_path)), "id")


def test_null_key_stops_the_job(tmp_path):
    write_parquet(tmp_path / "a.parquet", {"prompt": ["x", "y"], "id": ["a", None]})
    with pytest.raises(JobError, match="'id' is null or empty at .*row 1"):
        check_unique_keys(scan_inputs(str(tmp_path)), "id")
