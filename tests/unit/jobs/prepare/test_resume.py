import pytest

from turbobatch.errors import JobError
from turbobatch.jobs.prepare import resume
from turbobatch.jobs.prepare.inputs import InputFile
from turbobatch.jobs.prepare.plan import fingerprint, make_plan
from turbobatch.output import layout
from turbobatch.output.storage import Folder
from turbobatch.spec.resolved import ResolvedJob

FILES = [InputFile("file:///d/a.parquet", 10, 5, {"prompt": "string"})]


def prepare(out: Folder, **kw) -> set[int]:
    spec = ResolvedJob(**{"input": "i", "output": out.url, "shard_size": 2, "steps": 1, **kw})
    plan = make_plan(FILES, spec.shard_size)
    return resume.prepare(out, spec, plan, fingerprint(FILES, spec))


def commit(out: Folder, *ids: int) -> None:
    for i in ids:
        out.write_json(layout.done_path(i), {"shard": i})


def test_first_run_claims_the_output_and_reruns_see_committed_shards(tmp_path):
    out = Folder(str(tmp_path))
    assert prepare(out) == set()
    assert out.read_json(layout.PLAN)["num_shards"] == 3
    commit(out, 0, 2)
    (tmp_path / "_done" / "000001.json.tmp-abc").write_text("torn")  # a dead writer's temp file
    assert prepare(out) == {0, 2}


def test_changed_option_stops_with_what_changed(tmp_path):
    out = Folder(str(tmp_path))
    prepare(out)
    commit(out, 0)
    with pytest.raises(JobError, match=r"(?s)other inputs or options:.*--steps: 1 -> 2.*--overwrite"):
        prepare(out, steps=2)
    assert out.exists(layout.done_path(0))


def test_overwrite_discards_only_turbobatch_objects(tmp_path):
    out = Folder(str(tmp_path))
    prepare(out)
    commit(out, 0)
    (tmp_path / "README.txt").write_text("user file")
    assert prepare(out, steps=2, overwrite=True) == set()
    assert (tmp_path / "README.txt").exists()
    assert out.read_json(layout.SPEC)["fingerprint"]["spec"]["steps"] == 2


OURS = [
    "_done/000000.json",
    "_done/000001.json",
    "_failed/000002.json",
    "metadata/000000.parquet",
    "metadata/000001.parquet",
    "shards/000000.tar",
    "shards/000001.tar",
    "images/000000/0.png",
    "images/000000/a.tmp-b.webp",
    "data/000001.parquet",
    "shards/000002.tar.tmp-" + "0123456789abcdef" * 2,
    layout.summary_path(0),
]
FOREIGN = [
    "metadata/notes.txt",
    "shards/extra/keep.tar",
    "images/000000/notes.txt",
    "images/mine/0.png",
    "_job/mine.yaml",
    "_done/1.json",
    "data/000001.parquet.tmp-x",
    "README.txt",
]


def fill(out: Folder, names: list[str]) -> None:
    for rel in names:
        out.write_bytes(rel, b"x")


def test_overwrite_removes_what_the_layout_names_keeps_the_rest_and_says_so(tmp_path, capsys):
    out = Folder(str(tmp_path))
    prepare(out)
    fill(out, OURS + FOREIGN)
    assert prepare(out, steps=2, overwrite=True) == set()
    err = capsys.readouterr().err
    assert (
        f"turbobatch: --overwrite: removed 2 done markers, 1 failed marker, 2 metadata files, 2 tar shards, "
        f"1 data file, 2 image files, 1 temp file, _job/ from {tmp_path}; kept 7 file(s) that turbobatch does not "
        "write: _job/mine.yaml, _done/1.json, shards/extra/keep.tar, images/000000/notes.txt, images/mine/0.png, "
        "..."
    ) in err
    assert [rel for rel in OURS if (tmp_path / rel).exists()] == []
    assert [rel for rel in FOREIGN if not (tmp_path / rel).exists()] == []
    assert not (tmp_path / "_failed").exists()  # a folder it emptied goes too; one holding a kept file stays
    assert out.read_json(layout.SPEC)["fingerprint"]["spec"]["steps"] == 2  # the new job's claim


def test_overwrite_of_an_output_holding_only_ours_names_no_kept_files(tmp_path, capsys):
    out = Folder(str(tmp_path))
    prepare(out)
    commit(out, 0, 1)
    prepare(out, steps=2, overwrite=True)
    assert f"turbobatch: --overwrite: removed 2 done markers, _job/ from {tmp_path}\n" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_job"]  # empty folders gone too; the new claim


@pytest.mark.parametrize(
    "rel, kind",
    [
        ("_done/000012.json", "done marker"),
        ("_done/1234567.json", "done marker"),
        ("_done/12.json", None),
        ("metadata/000000.parquet", "metadata file"),
        ("metadata/000000.json", None),
        ("shards/000000.parquet", None),
        ("images/000003/k_1.jpg", "image file"),
        ("images/000003/k.txt", None),
        ("images/3/k.png", None),
        ("images/000003/sub/k.png", None),
        ("_job/plan.json", "_job/"),
        ("_job/.write-probe", "_job/"),
        ("_job/spec.json.tmp-" + "f" * 32, "temp file"),
        ("_job/other.json.tmp-" + "f" * 32, None),
        ("_job/spec.json.tmp-xyz", None),
        ("_job/summary/000003.json.gz", "_job/"),
        ("_job/summary/notes.json.gz", None),
        ("_job/summary/000003.json", None),
    ],
)
def test_owned_kind_names_only_the_layouts_files(rel, kind):
    assert layout.owned_kind(rel) == kind


def test_overwrite_of_the_same_job_resumes(tmp_path, capsys):
    out = Folder(str(tmp_path))
    prepare(out)
    commit(out, 1)
    assert prepare(out, overwrite=True) == {1}
    assert "--overwrite: removed" not in capsys.readouterr().err


def test_done_markers_without_a_spec_are_not_ours(tmp_path):
    out = Folder(str(tmp_path))
    commit(out, 0)
    with pytest.raises(JobError, match="has committed shards but no _job/spec.json"):
        prepare(out)


def test_unwritable_output_is_a_job_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(JobError, match="output: cannot write to"):
        resume.check_writable(Folder(str(blocker / "out")))


@pytest.mark.parametrize(
    "name, shard_id",
    [
        ("000123.json", 123),
        ("1234567.json", 1234567),
        ("1.json", None),
        ("00012.json", None),
        ("000123.json.tmp-x", None),
        ("000123.tar", None),
    ],
)
def test_a_marker_is_named_with_six_digits_or_more(name, shard_id):
    """As layout.owned_kind says; it is what lets a listing split by name prefix find every marker."""
    assert layout.shard_id_from_marker_name(name) == shard_id


def test_listing_prefixes_cover_the_plan_then_every_name_after_it():
    assert resume.listing_prefixes(None) == resume.listing_prefixes(2000) == ([], None)
    assert resume.listing_prefixes(2001) == (["000", "001", "002"], "002:")
    prefixes, after = resume.listing_prefixes(100_000)
    assert (len(prefixes), prefixes[0], prefixes[-1], after) == (100, "000", "099", "099:")
    prefixes, after = resume.listing_prefixes(5_000_000)  # 7-digit ids share the 3-digit prefixes
    assert (len(prefixes), prefixes[-1], after) == (1000, "999", "999:")


def test_a_local_listing_is_one_listing_whatever_the_plan(tmp_path):
    out = Folder(str(tmp_path))
    commit(out, 0, 1500, 99_999, 150_000)
    (tmp_path / "_done" / "1.json").write_text("{}")
    assert resume.done_versions(out, 100_000) == resume.done_versions(out)
    assert resume.committed_shards(out, 100_000) == {0, 1500, 99_999, 150_000}


def test_overwrite_removes_spec_and_summaries_before_any_marker(tmp_path, monkeypatch):
    """An --overwrite cut short must leave no summary that vouches for a removed marker: spec.json and the
    summaries go in a first call (without spec.json no reader trusts a summary: resume.done_listing)."""
    out = Folder(str(tmp_path))
    prepare(out)
    fill(out, OURS)
    calls: list[list[str]] = []
    real = Folder.remove_files
    monkeypatch.setattr(Folder, "remove_files", lambda self, rels: (calls.append(list(rels)), real(self, rels))[1])
    prepare(out, steps=2, overwrite=True)
    assert sorted(calls[0]) == sorted([layout.SPEC, layout.summary_path(0)])
    assert "_done/000000.json" in calls[1]  # the markers, with the rest, after
    assert not any(rel == layout.SPEC or rel.startswith(layout.SUMMARY_DIR) for call in calls[1:] for rel in call)
