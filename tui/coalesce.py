"""Between the feed threads and the UI: updates pile up here, the UI takes them in one batch.

Producers (the WatchFleet reader, actions that got a fresh device back) call `put` from any
thread. The UI calls `drain()` on a timer, so the table is touched at most that many times
a second however fast the controller talks; a device that changed ten times in between is
one row update, though every health sample is kept (bounded) for the sparklines.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .views import Connection, DeviceView, Dropped, EventEntry, FleetItem, Removed, RolloutView

MAX_UPDATES_PER_DEVICE = 16
"""Updates of one device kept per batch (the newest win). Sparklines get at most this many
samples of a device per apply; raising it costs memory only under bursts."""

MAX_EVENTS_PER_BATCH = 2000
"""Event-log lines kept per batch; older ones are counted in `Batch.events_lost`."""


@dataclass
class Batch:
    """Everything that arrived since the last drain.

    `snapshot`, when set, is the whole fleet after a (re)connect: devices missing from it are
    gone. `devices` holds each device's updates since then, oldest first.
    """

    snapshot: list[DeviceView] | None = None
    devices: dict[str, list[DeviceView]] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    events: list[EventEntry] = field(default_factory=list)
    events_lost: int = 0
    rollouts: dict[str, RolloutView] = field(default_factory=dict)
    connection: Connection | None = None
    server_dropped: int | None = None
    items: int = 0  # how many raw items this batch coalesces

    def __bool__(self) -> bool:
        return self.items > 0


class Coalescer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._batch = Batch()

    def put(self, item: FleetItem | Connection) -> None:
        with self._lock:
            self._put(item)

    def put_many(self, items) -> None:
        with self._lock:
            for item in items:
                self._put(item)

    def snapshot(self, devices: list[DeviceView]) -> None:
        """The whole fleet, as a (re)connect found it: replaces whatever device updates are pending."""
        with self._lock:
            batch = self._batch
            batch.snapshot = list(devices)
            batch.devices.clear()
            batch.removed.clear()
            batch.items += 1

    def drain(self) -> Batch:
        with self._lock:
            batch, self._batch = self._batch, Batch()
        return batch

    def _put(self, item: FleetItem | Connection) -> None:
        batch = self._batch
        batch.items += 1
        if isinstance(item, DeviceView):
            updates = batch.devices.setdefault(item.device_id, [])
            updates.append(item)
            if len(updates) > MAX_UPDATES_PER_DEVICE:
                del updates[0]
            batch.removed.discard(item.device_id)
        elif isinstance(item, EventEntry):
            batch.events.append(item)
            if len(batch.events) > MAX_EVENTS_PER_BATCH:
                del batch.events[0]
                batch.events_lost += 1
        elif isinstance(item, Removed):
            batch.devices.pop(item.device_id, None)
            batch.removed.add(item.device_id)
        elif isinstance(item, RolloutView):
            batch.rollouts[item.rollout_id] = item
        elif isinstance(item, Dropped):
            batch.server_dropped = max(batch.server_dropped or 0, item.total)
        elif isinstance(item, Connection):
            batch.connection = item
        else:
            raise TypeError(f"cannot coalesce {type(item).__name__}")
