"""``--prompt-template "a {style} photo of a {subject}"``: prompts built from a row's columns.

A template is Python format syntax whose fields are plain names: an input column, ``{prompt}``
for the prompt column (``--prompt-column``), or a name the sweep varies (spec/expand.py), which
takes the sweep's value rather than a column's. Conversions and format specs work as in
``str.format`` (``{n:03d}``). Checked twice:

- before any work (``check_columns``): every field names a swept name or a column of every input
  file, of a type that formats (text, numbers, bools); else a JobError naming the field, the file
  and its columns. A swept name that is also a column the template could mean is refused too:
  which of the two a field meant would be a guess.
- per row (``render``): a null value in a used column is that row's error, as is a value the
  format spec refuses; the row's other columns do not matter.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from turbobatch.errors import JobError

if TYPE_CHECKING:
    from turbobatch.jobs.prepare.inputs import InputFile
    from turbobatch.spec.job import JobSpec

PROMPT_FIELD = "prompt"  # {prompt} is the prompt column, whatever its name
_FORMATTABLE = (
    "string",
    "large_string",
    "string_view",
    "null",
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "halffloat",
    "float",
    "double",
)


@dataclass(frozen=True)
class Template:
    text: str
    fields: tuple[str, ...]  # the names it uses, in order of first use

    @classmethod
    def parse(cls, text: str) -> Template:
        """The template's fields; JobError for a syntax error, a positional ``{}`` / ``{0}``, or an
        attribute or index (``{a.b}``, ``{a[0]}``): fields name columns, nothing else."""
        if not isinstance(text, str) or not text:
            raise JobError(f"--prompt-template: {text!r} is not valid; expected text with {{column}} fields")
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as e:
            raise JobError(
                f"--prompt-template: {text!r} is not a valid template ({e}); write a literal brace as {{{{ or }}}}"
            ) from None
        fields: list[str] = []
        for _, name, spec, _ in parsed:
            if name is None:
                continue
            if name == "" or name.isdigit():
                raise JobError(
                    f"--prompt-template: {text!r} has a positional field {{{name}}}; name a column, e.g. {{subject}}"
                )
            if "." in name or "[" in name:
                raise JobError(
                    f"--prompt-template: field {{{name}}} is not a column name; fields name columns "
                    "(no attributes or indexes)"
                )
            if spec and "{" in spec:
                raise JobError(
                    f"--prompt-template: field {{{name}:{spec}}} nests a field in its format spec; "
                    "format specs must be literal"
                )
            if name not in fields:
                fields.append(name)
        return cls(text, tuple(fields))

    def columns(self, spec: JobSpec, swept: set[str]) -> dict[str, str]:
        """Field -> the input column it reads, for the fields the sweep does not set."""
        return {f: spec.prompt_column if f == PROMPT_FIELD else f for f in self.fields if f not in swept}

    def render(self, values: dict[str, Any]) -> tuple[str | None, str | None]:
        """(prompt, None), or (None, why this row has no prompt): a null field, a refused format."""
        for name in self.fields:
            if values.get(name) is None:
                column = " (the prompt column)" if name == PROMPT_FIELD else ""
                return None, f"prompt template: field {{{name}}}{column} is null in this row"
        try:
            return self.text.format(**values), None
        except (ValueError, TypeError, KeyError) as e:
            return None, f"prompt template: {type(e).__name__}: {e}"[:500]


def template_of(spec: JobSpec) -> Template | None:
    return Template.parse(spec.prompt_template) if spec.prompt_template else None


def check_columns(files: list[InputFile], spec: JobSpec, swept: set[str]) -> None:
    """Every field the sweep does not set names a column of every file, of a type that formats."""
    template = template_of(spec)
    if template is None:
        return
    columns = template.columns(spec, swept)
    for f in files:
        for field, column in columns.items():
            if column not in f.columns:
                known = sorted(swept)
                raise JobError(
                    f"--prompt-template: field {{{field}}} names no column of {f.url}; its columns are: "
                    f"{', '.join(f.columns) or '(none)'}" + (f"; swept names: {', '.join(known)}" if known else "")
                )  # ({prompt} is checked as --prompt-column, before)
            base = f.columns[column].removeprefix("dictionary<values=").split(",")[0]
            if base not in _FORMATTABLE:
                raise JobError(
                    f"--prompt-template: field {{{field}}}: column {column!r} in {f.url} has type "
                    f"{f.columns[column]}; a template field must be text, a number or a bool"
                )
        for field in template.fields:
            if field in swept and field in f.columns:
                raise JobError(
                    f"--sweep: {field!r} is also a column of {f.url}, so the template field {{{field}}} "
                    "could mean either; rename the field in the template and the sweep"
                )
