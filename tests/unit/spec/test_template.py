"""spec/template.py: a prompt built from a row's columns; checked against the inputs, then per row."""

from __future__ import annotations

import pytest

from turbobatch.errors import JobError
from turbobatch.jobs.prepare.inputs import InputFile, check_columns
from turbobatch.spec.job import JobSpec
from turbobatch.spec.template import Template


def spec(template: str, **kw) -> JobSpec:
    s = JobSpec(input="i", output="o", prompt_template=template, **kw)
    s.validate()
    return s


def files(**columns: str) -> list[InputFile]:
    return [
        InputFile("file:///d/a.parquet", 10, 2, {"prompt": "string", **columns}),
        InputFile("file:///d/b.parquet", 10, 2, {"prompt": "string", **columns, "late": "string"}),
    ]


def test_fields_are_column_names_in_order_of_first_use():
    t = Template.parse("a {style} photo of a {subject}, {style}; {n:03d} {{literal}}")
    assert t.fields == ("style", "subject", "n")
    assert t.render({"style": "ink", "subject": "fox", "n": 7}) == ("a ink photo of a fox, ink; 007 {literal}", None)


@pytest.mark.parametrize(
    "text, message",
    [
        ("a {} photo", "has a positional field {}"),
        ("a {0} photo", "has a positional field {0}"),
        ("a {row.style} photo", "field {row.style} is not a column name"),
        ("a {style[0]} photo", "field {style[0]} is not a column name"),
        ("a {style photo", "is not a valid template"),
        ("a {n:{width}} photo", "nests a field in its format spec"),
        ("", "is not valid; expected text with {column} fields"),
    ],
)
def test_bad_templates_are_job_errors(text, message):
    with pytest.raises(JobError, match="--prompt-template: ") as e:
        spec(text)
    assert message in str(e.value)


def test_a_field_naming_no_column_stops_the_job_naming_the_file_and_its_columns():
    with pytest.raises(JobError) as e:
        check_columns(files(style="string"), spec("a {style} photo of a {subject}"))
    assert str(e.value) == (
        "--prompt-template: field {subject} names no column of file:///d/a.parquet; its columns are: prompt, style"
    )
    with pytest.raises(JobError, match=r"field \{late\} names no column of file:///d/a.parquet"):
        check_columns(files(), spec("{late}"))  # in one file only: every file must have it
    with pytest.raises(JobError, match=r"swept names: medium"):
        check_columns(files(), spec("{medium} {subject}", sweep={"medium": ["ink"]}))
    check_columns(files(style="large_string", n="int64"), spec("{style} {n} {medium}", sweep={"medium": ["ink"]}))


def test_prompt_is_the_prompt_column_and_needed_only_when_used():
    renamed = [InputFile("file:///d/a.parquet", 10, 2, {"text": "string", "style": "string"})]
    check_columns(renamed, spec("a {style} {prompt}", prompt_column="text"))
    check_columns(renamed, spec("a {style} thing"))  # no {prompt}: no prompt column needed
    for needs_it in (spec("a {style} {prompt}"), JobSpec(input="i", output="o")):  # {prompt}, or no template
        with pytest.raises(JobError, match="--prompt-column: column 'prompt' is not in file:///d/a.parquet"):
            check_columns(renamed, needs_it)


def test_a_column_of_a_type_that_does_not_format_is_refused():
    with pytest.raises(JobError, match=r"field \{tags\}: column 'tags' .* has type list<item: string>"):
        check_columns(files(tags="list<item: string>"), spec("{tags}"))


def test_a_swept_name_that_is_also_a_column_is_ambiguous():
    with pytest.raises(JobError, match="--sweep: 'style' is also a column of file:///d/a.parquet"):
        check_columns(files(style="string"), spec("a {style} photo", sweep={"style": ["ink"]}))


def test_a_null_field_or_a_refused_format_fails_the_row_alone():
    t = Template.parse("a {style} photo of {prompt} #{n:d}")
    assert t.render({"style": None, "prompt": "x", "n": 1}) == (
        None,
        "prompt template: field {style} is null in this row",
    )
    assert t.render({"style": "ink", "prompt": None, "n": 1})[1] == (
        "prompt template: field {prompt} (the prompt column) is null in this row"
    )
    assert t.render({"style": "ink", "prompt": "x", "n": "one"}) == (
        None,
        "prompt template: ValueError: Unknown format code 'd' for object of type 'str'",
    )
