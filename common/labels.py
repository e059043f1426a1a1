"""Device labels (`site=lab`): what a key and a value may be, for the agent's --label and agent.yaml
`labels:`, and for the controller's selectors and operator labels alike (fleet.selectors).

Keys start with a letter or digit and go on with letters, digits and `-_./`; values use the same
characters and may be empty. Selector syntax (`,`, `!`, `=`, parentheses, spaces) never appears in
either, so any label can be selected.
"""
from __future__ import annotations

import re

NAME = r"[A-Za-z0-9][A-Za-z0-9._/-]*"
"""A label key (also a selector's key)."""
VALUE = r"[A-Za-z0-9._/-]*"
"""A label value (also each value a selector names)."""
_KEY = re.compile(rf"^{NAME}$")
_VALUE = re.compile(rf"^{VALUE}$")


def label_problem(key: str, value: str) -> str | None:
    """What is wrong with the label `key=value`, or None when it is one a selector can name."""
    if not _KEY.match(key):
        return f"label key {key!r}: use letters, digits and -_./, starting with a letter or digit"
    if not _VALUE.match(value):
        return f"label {key}={value!r}: values use letters, digits and -_./ only"
    return None


def split_label(text: str) -> tuple[str, str]:
    """`K=V` as (K, V), checked; ValueError saying what is wrong otherwise."""
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"label {text!r}: write it as KEY=VALUE")
    key, value = key.strip(), value.strip()
    problem = label_problem(key, value)
    if problem:
        raise ValueError(problem)
    return key, value
