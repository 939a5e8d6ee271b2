"""spec/expand.py: the image order, seeds and keys of an expanded job, and the sweep as given."""

from __future__ import annotations

import itertools

import pyarrow as pa
import pytest

from turbobatch.errors import JobError
from turbobatch.jobs.cli import parse_render_command
from turbobatch.jobs.prepare.inputs import InputFile
from turbobatch.jobs.prepare.plan import describe_changes, fingerprint, make_plan
from turbobatch.spec.expand import Expansion, merge_sweeps, normalize_sweep, sweep_schema
from turbobatch.spec.job import JobSpec


def parse_render_spec(argv, prog="turbobatch render"):
    return parse_render_command(argv, prog)[0]


SWEEP = [["steps", [1, 2]], ["style", ["ink", "oil", "chalk"]]]


def spec(**kw) -> JobSpec:
    values = dict(input="i", output="o", prompt_template="a {style} {prompt}")
    values.update(kw)
    s = JobSpec(**values)
    s.validate()
    return s


def test_the_image_index_order_is_rows_then_combinations_then_j_with_the_last_name_fastest():
    e = Expansion.of(spec(images_per_prompt=2, sweep=SWEEP))
    assert (e.combinations, e.per_row) == (6, 12)
    # As nested loops over the rows, then the sweep names in declared order, then j.
    expected = [
        (g, dict(zip(("steps", "style"), combo)), j)
        for g in range(3)
        for combo in itertools.product([1, 2], ["ink", "oil", "chalk"])
        for j in range(2)
    ]
    got = []
    for i in range(3 * 12):
        g, c, j = e.locate(i)
        assert e.index(g, c, j) == i
        got.append((g, e.values(c), j))
    assert got == expected
    assert e.values(1) == {"steps": 1, "style": "oil"}  # the last name varies fastest


def test_without_a_sweep_there_is_one_combination():
    e = Expansion.of(spec(images_per_prompt=3, prompt_template=None))
    assert (e.combinations, e.per_row, e.locate(7), e.values(0)) == (1, 3, (2, 0, 1), {})
    assert Expansion.of(spec(prompt_template=None)).per_row == 1


def test_keys_are_unique_even_for_row_keys_that_look_like_suffixes():
    row_keys = ["a", "a_1", "a_1_0", "a_0_1", "7", "7_7"]  # key-column values are free-form
    for e in (Expansion(1), Expansion(3), Expansion(1, (("style", ("x", "y")),)), Expansion(2, (("s", (1, 2, 3)),))):
        keys = [e.key(k, c, j) for k in row_keys for c in range(e.combinations) for j in range(e.images_per_prompt)]
        assert len(keys) == len(set(keys)) == len(row_keys) * e.per_row, e
    assert Expansion(1).key("000000004", 0, 0) == "000000004"  # one image per row: today's key
    assert Expansion(3).key("000000004", 0, 2) == "000000004_2"
    assert Expansion(1, (("style", ("x", "y")),)).key("k", 1, 0) == "k_1_0"  # a sweep: always both suffixes


def test_sweep_keys_sort_in_rendering_order():
    """The combination is zero-padded to the digits of the largest one, so `_02_0` sorts before `_10_0`."""
    e = Expansion(1, (("steps", (1, 2, 3, 4)), ("guidance_scale", (0.0, 0.5, 1.0))))  # 12 combinations
    keys = [e.key("000000004", c, 0) for c in range(e.combinations)]
    assert keys[:3] == ["000000004_00_0", "000000004_01_0", "000000004_02_0"] and keys[-1] == "000000004_11_0"
    assert sorted(keys) == keys
    assert Expansion(2, (("s", tuple(range(101))),)).key("k", 7, 1) == "k_007_1"  # 101 combinations: 0 to 100
    assert Expansion(1, (("s", tuple(range(10))),)).key("k", 9, 0) == "k_9_0"  # up to 10: one digit, as before


def test_seeds_are_first_plus_j_and_shared_by_every_combination():
    assert Expansion.seed(100, 2) == (102, None)
    seed, error = Expansion.seed(2**63 - 2, 2)
    assert seed is None and error == "seed 9223372036854775806 + 2 (image 2 of the row) is outside [0, 2**63)"


def test_shards_count_images_cut_rows_and_never_span_files():
    files = [InputFile(f"file:///d/{i}.parquet", 100, n, {"prompt": "string"}) for i, n in enumerate((3, 2))]
    plan = make_plan(files, shard_size=4, images_per_row=3)  # 5 rows x 3 images
    assert [(s.file[-9:], s.row_start, s.row_end, s.first_index, s.image_start, s.image_end) for s in plan] == [
        ("0.parquet", 0, 2, 0, 0, 4),  # row 1's images 0 here, 1 and 2 in the next shard
        ("0.parquet", 1, 3, 1, 4, 8),
        ("0.parquet", 2, 3, 2, 8, 9),  # the file's last shard is short: shards never span files
        ("1.parquet", 0, 2, 3, 9, 13),
        ("1.parquet", 1, 2, 4, 13, 15),
    ]
    assert [i for s in plan for i in s.images] == list(range(15))
    assert sum(s.num_images for s in plan) == 15
    one = make_plan(files, shard_size=4)  # one image per row: image index = global index
    assert [(s.row_start, s.row_end, s.image_start, s.image_end) for s in one] == [(0, 3, 0, 3), (0, 2, 3, 5)]


def test_a_changed_expansion_is_a_changed_job():
    files = [InputFile("file:///d/0.parquet", 100, 3, {"prompt": "string"})]
    base = spec(sweep=SWEEP)
    old = fingerprint(files, base)
    reordered = spec(sweep=[SWEEP[1], SWEEP[0]])  # the same cells, numbered otherwise: other keys
    assert describe_changes(old, fingerprint(files, reordered)) == [
        "--sweep: [['steps', [1, 2]], ['style', ['ink', 'oil', 'chalk']]] -> "
        "[['style', ['ink', 'oil', 'chalk']], ['steps', [1, 2]]]"
    ]
    assert base.output_hash() != reordered.output_hash()
    for change in (
        {"images_per_prompt": 2},
        {"prompt_template": "an {style} {prompt}"},
        {"steps_column": "st", "sweep": [SWEEP[1]]},
    ):
        assert describe_changes(old, fingerprint(files, spec(**{"sweep": SWEEP, **change}))), change


def test_an_older_fingerprint_without_the_expansion_fields_is_the_same_job():
    files = [InputFile("file:///d/0.parquet", 100, 3, {"prompt": "string"})]
    new = fingerprint(files, spec(prompt_template=None))
    old = {
        **new,
        "spec": {
            k: v
            for k, v in new["spec"].items()
            if k not in ("images_per_prompt", "prompt_template", "sweep", "steps_column")
        },
    }
    assert describe_changes(old, new) == []


def test_sweeps_from_flags_and_yaml_are_typed_and_merged(tmp_path):
    assert normalize_sweep(["steps=1, 2,4", "guidance-scale=0,1.5", "style=ink, oil"]) == [
        ["steps", [1, 2, 4]],
        ["guidance_scale", [0.0, 1.5]],
        ["style", ["ink", "oil"]],
    ]
    assert normalize_sweep({"width": [64, 32], "n": [1, 2.5]}) == [["width", [64, 32]], ["n", [1, 2.5]]]
    assert normalize_sweep(None) is None and normalize_sweep({}) is None
    config = tmp_path / "job.yaml"
    config.write_text("prompt_template: 'a {style} {prompt}'\nsweep:\n  style: [ink, oil]\n  steps: [1, 2]\n")
    parsed = parse_render_spec(["in", "out", "--config", str(config), "--sweep", "steps=3,4", "--sweep", "width=64"])
    assert parsed.sweep == [["style", ["ink", "oil"]], ["steps", [3, 4]], ["width", [64]]]  # a flag wins per name
    assert merge_sweeps(None, ["steps=1"]) == [["steps", [1]]]


@pytest.mark.parametrize(
    "sweep, message",
    [
        (
            {"stlye": ["a"]},
            "--sweep: unknown name 'stlye'; valid names are the sampling parameters steps, "
            "guidance_scale, width, height and the prompt template's fields (style, prompt)",
        ),
        ({"steps": [1, 0]}, "--sweep steps: 0 is out of range; expected an integer in [1, 100]"),
        ({"width": [64, 100]}, "--sweep width: 100 is not a multiple of 8"),
        ({"guidance_scale": ["much"]}, "--sweep guidance_scale: 'much' is not a finite number in [0.0, 100.0]"),
        (["steps=1.5"], "--sweep steps: 1.5 is not an integer"),
        ({"style": []}, "--sweep style: the list of values is empty"),
        (["style="], "--sweep style: the list of values is empty"),
        ({"style": "ink"}, "--sweep style: 'ink' is not a list of values"),
        ({"style": ["ink", "ink"]}, "--sweep style: 'ink' is listed twice"),
        ({"style": ["ink", 2]}, "--sweep style: ['ink', 2]: a template field's values must all be text or all be"),
        ({"style": [True]}, "must all be text or all be finite numbers"),
        (["steps=1", "steps=2"], "--sweep: 'steps' is given twice"),
        (["steps"], "--sweep: 'steps' is not valid; expected NAME=V1,V2"),
        ({"prompt": ["x"]}, "--sweep: 'prompt' cannot be swept"),
    ],
)
def test_bad_sweeps_are_job_errors_naming_what_is_valid(sweep, message):
    with pytest.raises(JobError) as e:
        spec(sweep=sweep)
    assert message in str(e.value)


def test_a_sweep_without_a_template_knows_only_the_sampling_parameters():
    with pytest.raises(JobError, match=r"unknown name 'style'.*\(none: no --prompt-template\)"):
        spec(prompt_template=None, sweep={"style": ["ink"]})


def test_a_parameter_is_swept_or_set_per_row_never_both():
    with pytest.raises(JobError, match="--steps-column: 'st' and --sweep steps both set steps"):
        spec(sweep={"steps": [1, 2]}, steps_column="st")
    spec(sweep={"steps": [1, 2]}, width_column="w")  # other parameters: fine


def test_sweep_columns_are_typed_once_per_job():
    s = spec(
        sweep={"steps": [1], "guidance_scale": [0, 1], "style": ["a"], "n": [1, 2], "x": [1, 0.5]},
        prompt_template="{style} {n} {x} {prompt}",
    )
    assert sweep_schema(s) == pa.schema(
        [
            ("sweep_steps", pa.int32()),
            ("sweep_guidance_scale", pa.float64()),
            ("sweep_style", pa.string()),
            ("sweep_n", pa.int64()),
            ("sweep_x", pa.float64()),
        ]
    )
