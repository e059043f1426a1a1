"""Label selectors: which devices a listing, rollout, command, configuration or query is about.

The syntax is Kubernetes' set-based one, comma-separated requirements that must all hold:

    site=lab            the label is set to this value (`==` is the same)
    env!=prod           the label is unset or set to another value
    tier in (a,b)       set to one of these values
    tier notin (a,b)    unset or set to none of these
    gpu                 the label is set (any value)
    !legacy             the label is not set

An empty selector matches every device. Keys and values are what `edge-agent run --label K=V` and
`edgefleet device label` accept: letters, digits and `-_./`, keys not empty.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from edgefleet.common.labels import NAME as _NAME
from edgefleet.common.labels import VALUE as _VALUE
from edgefleet.common.labels import label_problem, split_label

from .errors import InvalidArgument

_REQUIREMENT = re.compile(
    rf"\s*(?:(?P<not>!)\s*(?P<absent>{_NAME})"
    rf"|(?P<key>{_NAME})\s*(?:(?P<op>==|=|!=)\s*(?P<value>{_VALUE})"
    rf"|\s+(?P<set_op>in|notin)\s*\((?P<values>[^()]*)\))?)\s*(?:,|$)")
_LABEL_VALUE = re.compile(rf"^{_VALUE}$")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values  # "!=", "notin"

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!exists":
            return f"!{self.key}"
        if self.op in ("=", "!="):
            return f"{self.key}{self.op}{next(iter(self.values))}"
        return f"{self.key} {self.op} ({','.join(sorted(self.values))})"


@dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(requirement.matches(labels) for requirement in self.requirements)

    def __bool__(self) -> bool:
        return bool(self.requirements)

    def __str__(self) -> str:
        return ",".join(str(requirement) for requirement in self.requirements)


def parse_selector(text: str) -> Selector:
    """The selector `text` says; InvalidArgument (with the position and the syntax) when it is not one."""
    text = text.strip()
    requirements: list[Requirement] = []
    position = 0
    while position < len(text):
        match = _REQUIREMENT.match(text, position)
        if match is None or match.end() == position:
            raise InvalidArgument(
                f"selector {text!r}: cannot read it from column {position + 1} ({text[position:]!r}); "
                "write requirements separated by commas: K=V, K!=V, K in (A,B), K notin (A,B), K, !K")
        requirements.append(_requirement(match))
        position = match.end()
    return Selector(tuple(requirements))


def _requirement(match: re.Match) -> Requirement:
    if match["absent"]:
        return Requirement(match["absent"], "!exists")
    key = match["key"]
    if match["op"]:
        return Requirement(key, "=" if match["op"] in ("=", "==") else "!=", frozenset([match["value"]]))
    if match["set_op"]:
        values = [value.strip() for value in match["values"].split(",")]
        bad = [value for value in values if not value or not _LABEL_VALUE.match(value)]
        if bad:
            raise InvalidArgument(f"selector: {key} {match['set_op']} (...) has an empty or invalid value {bad[0]!r}")
        return Requirement(key, match["set_op"], frozenset(values))
    return Requirement(key, "exists")


def from_equalities(selector: Mapping[str, str]) -> Selector:
    """The selector of a proto `map<string, string> selector` (every key equal to its value)."""
    return Selector(tuple(Requirement(key, "=", frozenset([value])) for key, value in sorted(selector.items())))


def combined(equalities: Mapping[str, str], text: str) -> Selector:
    """The requests' two ways of selecting together: the `selector` map and the `select` expression."""
    return Selector(from_equalities(equalities).requirements + parse_selector(text).requirements)


def check_label(key: str, value: str) -> None:
    """InvalidArgument unless `key=value` is a label a selector can name."""
    problem = label_problem(key, value)
    if problem:
        raise InvalidArgument(problem)


def parse_label(text: str) -> tuple[str, str]:
    """`K=V` as (K, V), checked; InvalidArgument otherwise."""
    try:
        return split_label(text)
    except ValueError as err:
        raise InvalidArgument(str(err)) from err
