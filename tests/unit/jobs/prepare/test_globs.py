"""jobs/prepare/globs.py: whether two fsspec globs share a path, checked against fsspec's own matching."""

from __future__ import annotations

import itertools
import re

import pytest
from fsspec.utils import glob_translate

from turbobatch.jobs.prepare.globs import may_overlap

# Every string of up to 5 characters over this alphabet: where two globs of these letters overlap, a
# short witness exists, so brute force over it is the oracle.
STRINGS = ["".join(t) for n in range(6) for t in itertools.product("ab/.[", repeat=n)]
GLOBS = [
    "a",
    "a*",
    "*",
    "*/b",
    "**",
    "**/a",
    "a/**",
    "a/**/b",
    "*/*",
    "?",
    "a?b",
    "[ab]/*",
    "[!a]*",
    "[!a]",
    "*.a",
    "b*/**/*",
    "a/b",
    "a/*/",
    "[a-b]?",
    "a[",
    "**/**/b",
]


def fsspec_matches(pattern: str, path: str) -> bool:
    return re.match(glob_translate(pattern), path) is not None


@pytest.mark.parametrize("a, b", itertools.combinations_with_replacement(GLOBS, 2))
def test_agrees_with_fsspecs_matching(a, b):
    shared = [s for s in STRINGS if fsspec_matches(a, s) and fsspec_matches(b, s)]
    assert may_overlap(a, b) == bool(shared), shared[:3]
    assert may_overlap(b, a) == may_overlap(a, b)


@pytest.mark.parametrize(
    "input_glob, written, overlap",
    [
        ("/d/*.parquet", "/d/out/metadata/*.parquet", False),  # one level only
        ("/d/**/*.parquet", "/d/out/metadata/*.parquet", True),  # ** reaches into subfolders
        ("/d/**", "/d/out/_job/spec.json", True),
        ("/d/*/*.parquet", "/d/out/metadata/*.parquet", False),  # nothing the run writes is 2 levels down
        ("/d/*/*/*.parquet", "/d/out/metadata/*.parquet", True),
        ("/d/out/metadata/1*.parquet", "/d/out/metadata/*.parquet", True),  # shard 100000 and on
        ("/d/[0-9]*.parquet", "/d/metadata/*.parquet", False),
        ("/d/o?t/metadata/*.parquet", "/d/out/metadata/*.parquet", True),
        ("/d/**/x/*.parquet", "/d/metadata/*.parquet", False),
        ("/d/p.parquet", "/d/out/metadata/*.parquet", False),
        ("/d/[[]x]/*.parquet", "/d/[[]x]/metadata/*.parquet", False),  # an escaped "[" is the character
        ("/d/[[]x]/**", "/d/[[]x]/metadata/*.parquet", True),
    ],
)
def test_input_globs_against_written_names(input_glob, written, overlap):
    assert may_overlap(input_glob, written) is overlap


def test_a_glob_fsspec_rejects_is_rejected():
    with pytest.raises(ValueError, match="'\\*\\*' can only be an entire path component"):
        may_overlap("/d/a**b", "/d/x")
