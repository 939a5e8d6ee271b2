import pytest

from turbobatch.output.storage import TEMP_MARK, Folder


def test_atomic_writer_leaves_nothing_when_the_block_fails(tmp_path):
    out = Folder(str(tmp_path))
    with pytest.raises(RuntimeError), out.atomic_writer("shards/000001.tar") as f:
        f.write(b"partial")
        raise RuntimeError("killed mid-write")
    assert not (tmp_path / "shards" / "000001.tar").exists()
    assert [p.name for p in (tmp_path / "shards").iterdir()] == []


def test_write_replaces_whole_and_lists_names(tmp_path):
    out = Folder(str(tmp_path) + "/")
    out.write_bytes("a/x.json", b"1")
    out.write_bytes("a/x.json", b"22")
    assert out.read_bytes("a/x.json") == b"22"
    assert out.list_names("a") == ["x.json"]
    assert out.list_names("missing") == []
    assert not any(TEMP_MARK in p.name for p in (tmp_path / "a").iterdir())


def test_file_url_and_plain_path_are_the_same_folder(tmp_path):
    Folder(f"file://{tmp_path}").write_json("j.json", {"k": "ü"})
    assert Folder(str(tmp_path)).read_json("j.json") == {"k": "ü"}
