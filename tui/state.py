"""The fleet as the TUI knows it: devices, their recent health, the event log, rollouts.

Lives on the UI thread and changes only in `apply(batch)`, which returns what changed so
each screen redraws just that.
"""
from __future__ import annotations

import collections
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from edgefleet.fleet.errors import FleetError
from edgefleet.fleet.selectors import Selector, parse_selector

from .coalesce import Batch
from .views import STATUSES, Connection, DeviceView, EngineChange, EventEntry, Health, Plan, RolloutView

HISTORY_SAMPLES = 120
"""Health samples kept per device for the sparklines (about 2 min at one heartbeat a second)."""

EVENT_LOG_SIZE = 5000
"""Event-log lines kept; the oldest fall off."""

ENGINE_HISTORY = 16
"""Engine changes kept per device (the device screen shows the newest few)."""


@dataclass
class DeviceHistory:
    """Recent health of one device, oldest first, and its current detections rate."""

    fps: collections.deque = field(default_factory=lambda: collections.deque(maxlen=HISTORY_SAMPLES))
    latency_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=HISTORY_SAMPLES))
    temperature_c: collections.deque = field(default_factory=lambda: collections.deque(maxlen=HISTORY_SAMPLES))
    detections_per_s: float | None = None
    last: Health | None = None

    def add(self, health: Health) -> bool:
        """Record a sample unless it is the one recorded last; True when it was new."""
        if health == self.last:
            return False
        previous, self.last = self.last, health
        self.fps.append(health.fps)
        self.latency_ms.append(health.latency_ms_p95)
        if health.temperature_c is not None:
            self.temperature_c.append(health.temperature_c)
        if previous is not None and previous.time is not None and health.time is not None:
            elapsed = health.time - previous.time
            counted = health.detections_total - previous.detections_total
            if elapsed > 0 and counted >= 0:
                self.detections_per_s = counted / elapsed
            elif counted < 0:  # the agent restarted: its totals start over
                self.detections_per_s = None
        return True


@dataclass
class Changes:
    """What one `apply` changed. `full`: redraw everything (a new snapshot)."""

    devices: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    full: bool = False
    events: int = 0
    rollouts: bool = False
    connection: bool = False

    def touches(self, device_id: str) -> bool:
        return self.full or device_id in self.devices or device_id in self.removed


class FleetState:
    def __init__(self, address: str = ""):
        self.devices: dict[str, DeviceView] = {}
        self.history: dict[str, DeviceHistory] = {}
        self.engines: dict[str, collections.deque[EngineChange]] = {}  # per device, oldest first
        self.events: collections.deque[EventEntry] = collections.deque(maxlen=EVENT_LOG_SIZE)
        self.events_total = 0  # ever appended; a screen compares it with what it has shown
        self.rollouts: dict[str, RolloutView] = {}
        self.connection = Connection("connecting", address)
        self.server_dropped = 0
        self.applied_items = 0

    # ---- updating ----

    def apply(self, batch: Batch) -> Changes:
        changes = Changes()
        self.applied_items += batch.items
        self._apply_devices(batch, changes)
        for entry in batch.events:
            self.events.append(entry)
        self.events_total += len(batch.events) + batch.events_lost
        changes.events = len(batch.events) + batch.events_lost
        if batch.rollouts:
            self.rollouts.update(batch.rollouts)
            changes.rollouts = True
        if batch.connection is not None and batch.connection != self.connection:
            self.connection = batch.connection
            changes.connection = True
        if batch.server_dropped is not None:
            self.server_dropped = max(self.server_dropped, batch.server_dropped)
        return changes

    def _apply_devices(self, batch: Batch, changes: Changes) -> None:
        """The batch's snapshot (devices it lacks are removed), device updates and removals."""
        if batch.snapshot is not None:
            changes.full = True
            fresh = {d.device_id: d for d in batch.snapshot}
            for device_id in set(self.devices) - set(fresh):
                self._remove(device_id)
            for device in batch.snapshot:
                self._update(device)
        for device_id, updates in batch.devices.items():
            for device in updates:
                self._update(device)
            changes.devices.add(device_id)
        for device_id in batch.removed:
            if device_id in self.devices:
                self._remove(device_id)
                changes.removed.add(device_id)

    def _update(self, device: DeviceView) -> None:
        previous = self.devices.get(device.device_id)
        self.devices[device.device_id] = device
        plan = device.plan
        before = previous.plan if previous is not None else None
        if plan is not None and (before is None or plan.artifact_sha256 != before.artifact_sha256
                                 or plan.model != before.model or plan.backend != before.backend):
            self._engine_seen(device, plan)  # three compares, not the whole plan: this runs per update under load
        if device.health is not None:
            history = self.history.get(device.device_id)
            if history is None:
                history = self.history[device.device_id] = DeviceHistory()
            history.add(device.health)

    def _engine_seen(self, device: DeviceView, plan: Plan) -> None:
        """Record the device's engine (`plan`, its current one) when it is not the one recorded last
        (a plan change may keep it)."""
        changes = self.engines.get(device.device_id)
        if changes is None:
            changes = self.engines[device.device_id] = collections.deque(maxlen=ENGINE_HISTORY)
        last = changes[-1] if changes else None
        if last is not None and (last.model, last.backend, last.artifact_sha256) == (
                plan.model, plan.backend, plan.artifact_sha256):
            return
        changes.append(EngineChange(device.last_seen, plan.model, plan.backend, plan.artifact_sha256, plan.reason))

    def _remove(self, device_id: str) -> None:
        self.devices.pop(device_id, None)
        self.history.pop(device_id, None)
        self.engines.pop(device_id, None)

    def replace_rollouts(self, rollouts: list[RolloutView]) -> None:
        self.rollouts = {r.rollout_id: r for r in rollouts}

    # ---- reading ----

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for device in self.devices.values():
            counts[device.status] = counts.get(device.status, 0) + 1
        return counts

    def detections_per_s(self, device_id: str) -> float | None:
        history = self.history.get(device_id)
        return history.detections_per_s if history else None

    def new_events(self, shown_total: int) -> list[EventEntry] | None:
        """Events appended since a screen had seen `shown_total`; None when some fell off the log."""
        missing = self.events_total - shown_total
        if missing > len(self.events):
            return None
        return list(self.events)[len(self.events) - missing:] if missing else []


# ---- filter and sort, shared by the fleet table and its tests ----

def matches(device: DeviceView, needle: str) -> bool:
    """A label selector (`site=lab,tier in (a,b),!legacy`) on the device's labels when the text is one;
    otherwise a case-insensitive substring of device id, hostname, platform, status or a `key=value` label."""
    if not needle:
        return True
    selector = label_selector(needle)
    if selector is not None:
        return selector.matches(dict(device.labels))
    needle = needle.lower()
    values = (device.device_id, device.hostname, device.platform, device.status,
              *(f"{key}={value}" for key, value in device.labels))
    return any(needle in value.lower() for value in values)


_SELECTOR_SIGNS = re.compile(r"[=!]|\s(?:not)?in\s*\(")


@functools.lru_cache(maxsize=64)  # the table asks once per device per redraw, with the same text
def label_selector(text: str) -> Selector | None:
    """The selector `text` is, when it reads as one (it has `=`, `!`, `in (` or `notin (`); None otherwise,
    or while it is half typed (`site=(`), so the filter falls back to substrings instead of hiding everything."""
    if not _SELECTOR_SIGNS.search(text):
        return None
    try:
        return parse_selector(text)
    except FleetError:
        return None


_STATUS_RANK = {"offline": 0, "stale": 1, "online": 2}


def _health(attr: str) -> Callable[[DeviceView, FleetState], float]:
    def value(device: DeviceView, state: FleetState) -> float:
        health = device.health
        got = getattr(health, attr) if health is not None else None
        return float("-inf") if got is None else float(got)
    return value


SORT_KEYS: dict[str, Callable[[DeviceView, FleetState], object]] = {
    "device": lambda d, s: d.device_id,
    "status": lambda d, s: _STATUS_RANK.get(d.status, -1),
    "platform": lambda d, s: d.platform,
    "fps": _health("fps"),
    "p95": _health("latency_ms_p95"),
    "dps": lambda d, s: -1.0 if s.detections_per_s(d.device_id) is None else s.detections_per_s(d.device_id),
    "temp": _health("temperature_c"),
    "outbox": _health("outbox_depth"),
    "plan": lambda d, s: (d.plan.model, d.plan.input_width) if d.plan else ("", 0),
    "engine": lambda d, s: d.plan.backend if d.plan else "",
}
"""Sort value of each fleet-table column. Ties break on the device id."""


def sort_key(column: str, state: FleetState) -> Callable[[DeviceView], tuple]:
    value = SORT_KEYS[column]
    return lambda device: (value(device, state), device.device_id)
