"""The create-rollout dialog's fields -> a `RolloutRequest`, or a `FormError` naming the field.

Checked here with the controller's own rules (`fleet.rollouts.validate_spec`), so a typo is
pointed at in the dialog instead of coming back as INVALID_ARGUMENT:

    parse_rollout_form("9f2c…", selector="site=lab", canary="1", waves="10,50,100",
                       gate_fps_ratio="0.8", max_failures="0")
"""
from __future__ import annotations

import math
import re

from .errors import TuiError
from .views import RolloutRequest

FIELDS = ("artifact", "selector", "canary", "waves", "gate_fps_ratio", "max_failures")
"""The dialog's fields, in the order a reader fills them in."""


class FormError(TuiError):
    """A field of the create dialog is not valid. `field` is one of `FIELDS`."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def parse_selector(text: str) -> tuple[tuple[str, str], ...]:
    """`site=lab zone=dock` (spaces or commas between) -> sorted pairs; empty selects every device."""
    pairs: dict[str, str] = {}
    for token in re.split(r"[\s,]+", text.strip()):
        if not token:
            continue
        key, equals, value = token.partition("=")
        if not equals or not key or not value:
            raise FormError("selector", f"selector: {token!r} is not KEY=VALUE")
        if key in pairs and pairs[key] != value:
            raise FormError("selector", f"selector: {key} is given twice ({pairs[key]!r} and {value!r})")
        pairs[key] = value
    return tuple(sorted(pairs.items()))


def parse_waves(text: str) -> tuple[int, ...]:
    """`10,50,100` (or `10 50 100%`): cumulative percentages of the targets, rising, ending at 100."""
    tokens = [t for t in re.split(r"[\s,]+", text.strip().replace("%", "")) if t]
    if not tokens:
        raise FormError("waves", "waves: give at least one percentage, e.g. 100 or 10,50,100")
    try:
        waves = tuple(int(t) for t in tokens)
    except ValueError:
        raise FormError("waves", f"waves: {text.strip()!r} is not a list of whole percentages") from None
    if any(not 1 <= w <= 100 for w in waves) or list(waves) != sorted(set(waves)):
        raise FormError("waves", f"waves: {', '.join(map(str, waves))} must rise strictly within 1..100")
    if waves[-1] != 100:
        raise FormError("waves", f"waves: the last wave must reach 100 %, got {waves[-1]}")
    return waves


def _whole(field: str, label: str, text: str, minimum: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise FormError(field, f"{label}: {text.strip()!r} is not a whole number") from None
    if value < minimum:
        raise FormError(field, f"{label} must be >= {minimum}, got {value}")
    return value


def parse_gate(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise FormError("gate_fps_ratio", f"gate fps ratio: {text.strip()!r} is not a number") from None
    if math.isnan(value) or not 0 < value <= 10:
        raise FormError("gate_fps_ratio", f"gate fps ratio must be within 0..10 (above 0), got {text.strip()}")
    return value


def parse_rollout_form(artifact_sha256: str | None, *, selector: str, canary: str, waves: str,
                       gate_fps_ratio: str, max_failures: str) -> RolloutRequest:
    """The request the fields describe; raises `FormError` for the first field that is wrong."""
    if not artifact_sha256:
        raise FormError("artifact", "choose an artifact first (↑/↓ in the list)")
    return RolloutRequest(
        artifact_sha256=artifact_sha256,
        selector=parse_selector(selector),
        canary=_whole("canary", "canary", canary, 1),
        waves_percent=parse_waves(waves),
        gate_fps_ratio=parse_gate(gate_fps_ratio),
        max_failures=_whole("max_failures", "max failures", max_failures, 0),
    )
