"""Whether two fsspec globs can match one same path: the test that keeps a run's own files out of its input.

fsspec's glob() matches paths against ``fsspec.utils.glob_translate(pattern)``: ``*`` and ``?`` stay within
one path segment, ``[...]`` is one character of a set, a whole ``**`` segment spans any number of segments.
A regular expression cannot be intersected with another directly, so each glob becomes the small automaton
of that same translation, and the two are walked together: they share a path exactly when both can reach
their end on the same characters. A literal path takes part as a glob through ``glob.escape``.
"""

from __future__ import annotations

import re
from typing import Any

from fsspec.utils import glob_translate

# A one-character test: ("lit", c) is the character c; ("re", pattern) a set of characters.
Char = tuple[str, Any]
Edge = tuple[Char | None, int]  # None: a move that reads nothing
ANY: Char = ("re", re.compile(".", re.S))
NOT_SLASH: Char = ("re", re.compile("[^/]"))
SLASH: Char = ("lit", "/")


def may_overlap(a: str, b: str) -> bool:
    """Whether some path matches both globs (``/``-separated paths without protocol, as fsspec's
    glob() sees them). Exact for the characters each names; a set meeting a set counts as sharing
    one (conservative: the answer may then be "yes" where no path is in both). ValueError for a
    glob fsspec rejects ("**" inside a segment)."""
    first, second = _automaton(a), _automaton(b)
    ends = (len(first) - 1, len(second) - 1)
    seen: set[tuple[int, int]] = set()
    todo = [(0, 0)]
    while todo:
        state = todo.pop()
        if state in seen:
            continue
        seen.add(state)
        if state == ends:
            return True
        i, j = state
        todo += [(x, j) for char, x in first[i] if char is None]
        todo += [(i, y) for char, y in second[j] if char is None]
        todo += [(x, y) for p, x in first[i] for q, y in second[j] if p and q and _meet(p, q)]
    return False


def _meet(p: Char, q: Char) -> bool:
    """Whether one character passes both tests."""
    if p[0] == "lit" and q[0] == "lit":
        return p[1] == q[1]
    if p[0] == "lit":
        return bool(q[1].fullmatch(p[1]))
    if q[0] == "lit":
        return bool(p[1].fullmatch(q[1]))
    return True  # two sets: assumed to share a character


def _automaton(pattern: str) -> list[list[Edge]]:
    """The states of ``glob_translate(pattern)``: each state's edges; the last state is the end."""
    glob_translate(pattern)  # the same ValueError as fsspec's glob() for a pattern it rejects
    states: list[list[Edge]] = [[]]

    def step(char: Char, repeat: bool = False) -> None:
        here = len(states) - 1
        states.append([])
        states[here] += [(char, here), (None, here + 1)] if repeat else [(char, here + 1)]

    parts = pattern.split("/")
    for idx, part in enumerate(parts):
        last = idx == len(parts) - 1
        if part == "**" and last:  # ".*"
            step(ANY, repeat=True)
            continue
        if part == "**":  # "(?:.+/)?": nothing, or one or more characters and a "/"
            here = len(states) - 1
            inner, end = here + 1, here + 2
            states += [[], []]
            states[here] += [(None, end), (ANY, inner)]
            states[inner] += [(ANY, inner), (SLASH, end)]
            continue
        if part == "*":  # a whole segment: "[^/]+"
            step(NOT_SLASH)
            step(NOT_SLASH, repeat=True)
        else:
            for char, repeat in _segment(part):
                step(char, repeat)
        if not last:
            step(SLASH)
    return states


def _segment(part: str) -> list[tuple[Char, bool]]:
    """One segment's characters as (test, repeated) pairs, scanned as fnmatch/fsspec scan them."""
    out: list[tuple[Char, bool]] = []
    i, n = 0, len(part)
    while i < n:
        c = part[i]
        i += 1
        if c == "*":
            if not out or out[-1] != (NOT_SLASH, True):  # consecutive stars are one
                out.append((NOT_SLASH, True))
        elif c == "?":
            out.append((NOT_SLASH, False))
        elif c == "[" and (j := _set_end(part, i)) is not None:
            regex = glob_translate(part[i - 1 : j + 1])  # fsspec's own reading of the set
            out.append((("re", re.compile(regex)), False))
            i = j + 1
        else:
            out.append((("lit", c), False))
    return out


def _set_end(part: str, i: int) -> int | None:
    """The index of the "]" closing a set that opens before ``i``; None when it is not closed (a literal "[")."""
    j = i
    if j < len(part) and part[j] == "!":
        j += 1
    if j < len(part) and part[j] == "]":
        j += 1
    while j < len(part) and part[j] != "]":
        j += 1
    return j if j < len(part) else None
