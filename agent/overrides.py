"""Operator plan overrides (agent.messages.PlanOverride) as the runtime controller's ladder, and in words."""
from __future__ import annotations

from dataclasses import replace

from edgefleet.adaptive.controller import Rung, bounded_ladder
from edgefleet.adaptive.errors import LadderError

from .messages import PlanOverride


def override_ladder(ladder: list[Rung], current: Rung, override: PlanOverride) -> list[Rung]:
    """The rungs an operator's override leaves: the pinned one alone, or those within the bounds.

    A pin keeps what it leaves unset (0 or "") from the current rung; a pinned model must be one
    of the ladder's. Raises LadderError when nothing fits."""
    if override.pinned is None:
        return bounded_ladder(ladder, override.max_input_size, override.min_detect_interval,
                              override.max_detect_interval)
    pinned = override.pinned
    rung = current
    if pinned.model and pinned.model != current.model:
        same = [r for r in ladder if r.model == pinned.model]
        if not same:
            raise LadderError(f"pinned model {pinned.model!r} is not on this device "
                              f"(it has {sorted({r.model for r in ladder})})")
        rung = same[0]
    return [replace(rung, input_width=pinned.input_width or rung.input_width,
                    input_height=pinned.input_height or rung.input_height,
                    detect_interval=pinned.detect_interval or rung.detect_interval, expected_ms=None)]


def describe_override(override: PlanOverride) -> str:
    """One line for logs and the plan's reason: "cleared", "pinned ...", or the bounds."""
    if override.clear:
        return "cleared"
    if override.pinned is not None:
        p = override.pinned
        fields = [p.model, f"{p.input_width}x{p.input_height}" if p.input_width else "",
                  f"every {p.detect_interval}" if p.detect_interval else ""]
        return "pinned " + " ".join(f for f in fields if f)
    bounds = [f"max input {override.max_input_size}" if override.max_input_size else "",
              f"detect every >= {override.min_detect_interval}" if override.min_detect_interval else "",
              f"every <= {override.max_detect_interval}" if override.max_detect_interval else ""]
    return "bounded to " + ", ".join(b for b in bounds if b)


def override_interval(planned: int, override: PlanOverride) -> int:
    """Without the runtime controller only the detect interval follows an override: the pinned
    one, the planned one kept within the bounds, or (`clear`) the planned one."""
    if override.pinned is not None and override.pinned.detect_interval:
        return override.pinned.detect_interval
    if override.clear:
        return planned
    interval = max(planned, override.min_detect_interval or 1)
    return min(interval, override.max_detect_interval or interval)
