import pytest

from turbobatch.jobs import layout, resume
from turbobatch.jobs.errors import JobError
from turbobatch.jobs.inputs import InputFile
from turbobatch.jobs.plan import fingerprint, make_plan
from turbobatch.jobs.spec import JobSpec
from turbobatch.jobs.storage import Folder

FILES = [InputFile("file:///d/a.parquet", 10, 5, {"prompt": "string"})]


def prepare(out: Folder, **kw) -> set[int]:
    spec = JobSpec(input="i", output=out.url, shard_size=2, **kw)
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


def test_overwrite_of_the_same_job_resumes(tmp_path):
    out = Folder(str(tmp_path))
    prepare(out)
    commit(out, 1)
    assert prepare(out, overwrite=True) == {1}


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
