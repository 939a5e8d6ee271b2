from turbobatch.jobs.prepare.inputs import InputFile
from turbobatch.jobs.prepare.plan import describe_changes, fingerprint, make_plan
from turbobatch.spec.job import JobSpec
from turbobatch.spec.resolved import ResolvedJob


def files(*rows: int) -> list[InputFile]:
    return [InputFile(f"file:///d/{i}.parquet", 100 * n, n, {"prompt": "string"}) for i, n in enumerate(rows)]


def test_shards_cover_every_row_once_and_never_span_files():
    plan = make_plan(files(7, 0, 3, 10), shard_size=4)
    assert [(s.file[-9:], s.row_start, s.row_end, s.first_index) for s in plan] == [
        ("0.parquet", 0, 4, 0),
        ("0.parquet", 4, 7, 4),
        ("2.parquet", 0, 3, 7),
        ("3.parquet", 0, 4, 10),
        ("3.parquet", 4, 8, 14),
        ("3.parquet", 8, 10, 18),
    ]
    assert [s.shard_id for s in plan] == list(range(6))
    assert sum(s.num_rows for s in plan) == 20


def test_key_width_grows_past_nine_digits():
    assert make_plan(files(5), 2)[0].key_width == 9
    assert make_plan(files(10**10 + 1), 10**6)[0].key_width == 11


def test_describe_changes_names_each_difference():
    spec = ResolvedJob(input="i", output="o", steps=1)
    old = fingerprint(files(7, 3), spec)
    new_spec = ResolvedJob(input="i", output="o", steps=2)
    new_files = files(7, 4)[:1] + [InputFile("file:///d/new.parquet", 1, 1, {})]
    changes = describe_changes(old, fingerprint(new_files, new_spec))
    assert changes == [
        "--steps: 1 -> 2",
        "input removed: file:///d/1.parquet",
        "input added: file:///d/new.parquet",
    ]
    assert describe_changes(old, fingerprint(files(7, 3), ResolvedJob(input="i", output="o", steps=1, workers=9))) == []


def test_an_output_made_before_variants_existed_resumes_with_plain_files_only():
    """Its fingerprint lacks the variant fields: it was made from plain files."""
    fields = ResolvedJob(input="a", output="b", vae="v").output_fields()
    old = {"spec": {k: v for k, v in fields.items() if not k.endswith("_variant")}, "inputs": []}
    same = {**fields, "model_variant": "none", "vae_variant": "none"}
    assert describe_changes(old, {"spec": same, "inputs": []}) == []
    fp16 = {**same, "model_variant": "fp16"}
    assert describe_changes(old, {"spec": fp16, "inputs": []}) == ["--variant (model weights): 'none' -> 'fp16'"]


def test_inputs_are_compared_by_their_path_below_input_not_their_url():
    spec = JobSpec(input="i", output="o")

    def under(root: str, sizes: tuple[int, ...] = (100, 200)) -> list[InputFile]:
        return [
            InputFile(f"{root}/part-{i}.parquet", size, 5, {}, name=f"part-{i}.parquet") for i, size in enumerate(sizes)
        ]

    old = fingerprint(under("file:///tmp/upload-1/data"), spec)
    assert describe_changes(old, fingerprint(under("s3://bucket/copy/data"), spec)) == []
    assert describe_changes(old, fingerprint(under("file:///tmp/upload-2/data", (100, 201)), spec)) == [
        "input changed: part-1.parquet (size 200 -> 201, rows 5 -> 5)"
    ]
    legacy = {**old, "inputs": [{k: v for k, v in f.items() if k != "name"} for f in old["inputs"]]}
    moved = describe_changes(legacy, fingerprint(under("file:///tmp/upload-2/data"), spec))  # made before names
    assert "input removed: file:///tmp/upload-1/data/part-0.parquet" in moved
