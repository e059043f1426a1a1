"""Label selectors: the syntax every `--select` takes, and what each requirement matches."""
from __future__ import annotations

import pytest

from edgefleet.fleet.errors import InvalidArgument
from edgefleet.fleet.selectors import combined, parse_label, parse_selector

LAB_A = {"site": "lab", "tier": "a", "gpu": "orin"}
FIELD = {"site": "field", "env": "prod", "legacy": "yes"}


@pytest.mark.parametrize(("text", "lab_a", "field"), [
    ("", True, True),
    ("site=lab", True, False),
    ("site==lab", True, False),
    ("site!=lab", False, True),
    ("env!=prod", True, False),
    ("tier in (a, b)", True, False),
    ("tier notin (a,b)", False, True),
    ("gpu", True, False),
    ("!legacy", True, False),
    ("site in (lab,field), !legacy", True, False),
    ("site=lab,tier=b", False, False),
])
def test_requirements_match_as_written(text, lab_a, field):
    selector = parse_selector(text)
    assert (selector.matches(LAB_A), selector.matches(FIELD)) == (lab_a, field)


def test_a_selector_prints_as_it_parses():
    text = "site=lab,tier in (a,b),env!=prod,!legacy,gpu"
    assert str(parse_selector(text)) == text
    assert str(parse_selector(str(parse_selector(text)))) == text


@pytest.mark.parametrize("text", ["=lab", "site lab", "a,,b", "tier in (a,)", "tier in (a", "site=l@b"])
def test_a_malformed_selector_says_where(text):
    with pytest.raises(InvalidArgument, match="selector"):
        parse_selector(text)


def test_the_map_and_the_expression_both_hold():
    selector = combined({"site": "lab"}, "!legacy")
    assert selector.matches(LAB_A) and not selector.matches({**LAB_A, "legacy": "1"})
    assert not selector.matches(FIELD)


def test_labels_are_checked():
    assert parse_label(" site = lab ") == ("site", "lab")
    for bad in ("site", "=lab", "si te=lab", "site=l ab"):
        with pytest.raises(InvalidArgument):
            parse_label(bad)
