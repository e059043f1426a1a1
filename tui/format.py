"""How values read on screen: ages, plans, engines, numbers, status colours. "—" for unknown."""
from __future__ import annotations

import functools
import time

from rich.text import Text

from .views import Connection, DeviceView, Plan, PlanOverride

DASH = "—"
STATUS_STYLE = {"online": "bold green", "stale": "bold yellow", "offline": "bold red"}
ROLLOUT_STYLE = {
    "pending": "dim", "running": "bold cyan", "paused": "bold yellow",
    "succeeded": "bold green", "failed": "bold red", "aborted": "red",
}
DEPLOY_STYLE = {
    "pending": "dim", "downloading": "cyan", "verifying": "cyan", "building": "cyan", "warming_up": "cyan",
    "shadow_testing": "bold cyan", "active": "green", "failed": "bold red", "rolled_back": "red",
    "skipped": "yellow",
}
"""A rollout device's state: in progress cyan, on the new engine green, failed red, skipped yellow."""


def age(seconds: float | None) -> str:
    """3s, 4m, 2h, 5d: coarse on purpose, so a column does not churn."""
    if seconds is None:
        return "never"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h"
    return f"{seconds // 86400:.0f}d"


def status_text(device: DeviceView, now: float) -> Text:
    ago = age(now - device.last_seen) if device.last_seen is not None else "never"
    return Text.assemble((f"● {device.status:<7}", STATUS_STYLE.get(device.status, "")), f" {ago:>5}")


def status_style(status: str) -> str:
    return STATUS_STYLE.get(status, "")


def number(value: float | None, digits: int = 1) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def interval_text(interval: int) -> str:
    if interval <= 0:
        return ""
    return "every frame" if interval == 1 else f"1/{interval}"


@functools.lru_cache(maxsize=1024)  # a fleet runs a handful of distinct plans; rows redraw often
def plan_text(plan: Plan | None) -> str:
    """model precision WxH 1/N (detect every Nth frame)."""
    if plan is None:
        return DASH
    parts = [plan.model or "?", plan.precision]
    if plan.input_width and plan.input_height:
        parts.append(f"{plan.input_width}×{plan.input_height}")
    parts.append(interval_text(plan.detect_interval))
    return " ".join(p for p in parts if p) or DASH


@functools.lru_cache(maxsize=1024)
def engine_text(plan: Plan | None) -> str:
    if plan is None or not (plan.backend or plan.artifact_sha256):
        return DASH
    if plan.artifact_sha256:
        return f"{plan.backend or '?'} {plan.artifact_sha256[:8]}"
    return plan.backend


def override_text(override: PlanOverride | None) -> str:
    if override is None:
        return "none"
    parts = []
    if override.pinned is not None:
        parts.append(f"pinned to {plan_text(override.pinned)}" + (
            f" on {override.pinned.backend}" if override.pinned.backend else ""))
    if override.max_input_size:
        parts.append(f"input ≤ {override.max_input_size}")
    if override.min_detect_interval or override.max_detect_interval:
        low = override.min_detect_interval or 1
        high = override.max_detect_interval or "∞"
        parts.append(f"detect interval {low}..{high}")
    return ", ".join(parts) or "none"


def labels_text(device: DeviceView) -> str:
    """`key=value` pairs, an operator's label marked `*` (it wins over the device's own); "none" without any."""
    operator = set(device.operator_labels)
    return " · ".join(f"{key}={value}{'*' if key in operator else ''}" for key, value in device.labels) or "none"


def progress_bar(succeeded: int, failed: int, target: int, width: int = 24) -> Text:
    """`██████▒▒░░░░` — succeeded (green), failed (red), still to go (dim), `width` cells in all."""
    if target <= 0:
        return Text("░" * width, style="dim")
    ok = round(width * min(succeeded, target) / target)
    bad = min(width - ok, round(width * min(failed, target) / target))
    if failed and not bad and ok < width:  # one failure among many still shows
        bad = 1
    return Text.assemble(("█" * ok, "green"), ("█" * bad, "red"), ("░" * (width - ok - bad), "dim"))


def size_text(size_bytes: int) -> str:
    """1.2 MB, 340 kB, 12 B (decimal units)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size_bytes >= scale:
            return f"{size_bytes / scale:.1f} {unit}"
    return f"{size_bytes} B"


def clock_time(seconds: float | None) -> str:
    """HH:MM:SS in local time."""
    if seconds is None:
        return DASH
    return time.strftime("%H:%M:%S", time.localtime(seconds))


def when(seconds: float | None, now: float) -> str:
    """HH:MM:SS within the last day, else `Nov 13 22:13` (local time)."""
    if seconds is None:
        return DASH
    if 0 <= now - seconds < 86400:
        return time.strftime("%H:%M:%S", time.localtime(seconds))
    return time.strftime("%b %d %H:%M", time.localtime(seconds))


def banner_text(connection: Connection, now: float) -> str:
    """One line about the controller link; empty when all is well."""
    if connection.state == "connected":
        return ""
    if connection.state == "connecting":
        return f"Connecting to the controller at {connection.address}…"
    wait = max(0.0, (connection.retry_at or now) - now)
    retry = f"retrying in {wait:.0f}s" if wait >= 1 else "retrying now"
    return f"Controller {connection.address} {connection.error} — {retry} (attempt {connection.attempt})"
