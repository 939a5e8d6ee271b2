"""spec/sampling.py: one rule set for the sampling parameters, in flags, sweeps and rows."""

import pytest

from turbobatch.spec import sampling
from turbobatch.spec.sampling import SamplingParams


@pytest.mark.parametrize(
    "name, value, why",
    [
        ("steps", 4, None),
        ("steps", 0, "0 is out of range; expected an integer in [1, 100]"),
        ("steps", 2.0, "2.0 is not an integer; expected an integer in [1, 100]"),
        ("steps", True, "True is not an integer; expected an integer in [1, 100]"),
        ("width", 72, None),
        ("width", 70, "70 is not a multiple of 8 (the VAE needs it)"),
        ("height", 8192, "8192 is out of range; expected an integer in [8, 4096]"),
        ("guidance_scale", 0, None),
        ("guidance_scale", float("inf"), "inf is not a finite number in [0.0, 100.0]"),
        ("guidance_scale", -1.0, "-1.0 is out of range; expected a number in [0.0, 100.0]"),
    ],
)
def test_problem_says_why_in_the_words_flags_use(name, value, why):
    assert sampling.problem(name, value) == why


@pytest.mark.parametrize(
    "name, raw, value",
    [
        ("steps", 4.0, 4),
        ("steps", "4", 4),
        ("steps", " 4.0 ", 4),
        ("steps", 4.5, 4.5),
        ("steps", "four", "four"),
        ("guidance_scale", 2, 2.0),
        ("guidance_scale", "1.5", 1.5),
        ("width", "64", 64),
    ],
)
def test_coerce_takes_values_as_data_holds_them(name, raw, value):
    assert sampling.coerce(name, raw) == value and type(sampling.coerce(name, raw)) is type(value)


def test_params_are_hashable_and_replaceable():
    p = SamplingParams(1, 0.0, 64, 48)
    assert p.replace({"steps": 2}) == SamplingParams(2, 0.0, 64, 48)
    assert len({p, p.replace({}), p.replace({"width": 64})}) == 2
