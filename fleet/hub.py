"""In-memory fan-out: open device sessions and their commands, live detections and fleet changes.

A watcher gets a bounded queue. When it is full the newest item is dropped for that
watcher only and counted, so a slow watcher never stalls ingest or other watchers.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .detection_store import FrameRecord
from .rollout_store import RolloutRecord
from .store import DeviceRecord

if TYPE_CHECKING:
    from .metrics import ControllerMetrics

logger = logging.getLogger(__name__)

T = TypeVar("T")

COMMAND_QUEUE_SIZE = 64


@dataclass(eq=False)  # identity semantics: watchers live in a set
class Watcher(Generic[T]):
    accepts: Callable[[T], T | None]
    queue: asyncio.Queue
    dropped: int = 0


class Topic(Generic[T]):
    """Publishes items to every watcher whose `accepts` returns something for them.

    `on_drop`, when given, is called once per item dropped for a full watcher (a metrics counter).
    """

    def __init__(self, on_drop: Callable[[], None] | None = None) -> None:
        self._watchers: set[Watcher[T]] = set()
        self._on_drop = on_drop

    def watch(self, accepts: Callable[[T], T | None] = lambda item: item, maxsize: int = 256) -> Watcher[T]:
        watcher = Watcher(accepts, asyncio.Queue(maxsize=maxsize))
        self._watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher[T]) -> None:
        self._watchers.discard(watcher)

    def publish(self, items: Iterable[T]) -> None:
        items = list(items)
        for watcher in list(self._watchers):
            for item in items:
                selected = watcher.accepts(item)
                if selected is None:
                    continue
                try:
                    watcher.queue.put_nowait(selected)
                except asyncio.QueueFull:
                    watcher.dropped += 1
                    if self._on_drop is not None:
                        self._on_drop()


@dataclass(frozen=True)
class FleetChange:
    """A device as it is after a change, and what happened in words (empty for routine updates)."""

    device: DeviceRecord
    connected: bool
    time: float
    message: str = ""


@dataclass(frozen=True)
class RolloutChange:
    """A rollout as it is after a change, and what happened in words."""

    rollout: RolloutRecord
    time: float
    message: str = ""


@dataclass(frozen=True)
class Command:
    """A command for a device's Session: `action` names a `Command` oneof field, `payload` is its value."""

    action: str
    payload: dict[str, Any]
    command_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])


class Hub:
    def __init__(self, metrics: ControllerMetrics | None = None) -> None:
        def counter(stream: str) -> Callable[[], None] | None:
            return None if metrics is None else functools.partial(metrics.watcher_dropped.inc, stream=stream)

        self.detections: Topic[FrameRecord] = Topic(counter("detections"))
        self.fleet: Topic[FleetChange | RolloutChange] = Topic(counter("fleet"))
        self._sessions: dict[str, list[asyncio.Queue]] = {}  # device id -> one command queue per open Session

    # ---- sessions ----

    def open_session(self, device_id: str) -> asyncio.Queue:
        """Register an open Session; the returned queue receives the commands sent to the device."""
        commands: asyncio.Queue = asyncio.Queue(maxsize=COMMAND_QUEUE_SIZE)
        self._sessions.setdefault(device_id, []).append(commands)
        return commands

    def close_session(self, device_id: str, commands: asyncio.Queue) -> None:
        queues = self._sessions.get(device_id, [])
        if commands in queues:
            queues.remove(commands)
        if not queues:
            self._sessions.pop(device_id, None)

    def connected(self, device_id: str) -> bool:
        return device_id in self._sessions

    def send(self, device_id: str, command: Command) -> int:
        """Queue the command on every open Session of the device; returns how many took it."""
        delivered = 0
        for commands in self._sessions.get(device_id, []):
            try:
                commands.put_nowait(command)
                delivered += 1
            except asyncio.QueueFull:
                logger.warning("session of %s is not reading commands; dropped %s", device_id, command.action)
        return delivered

    # ---- fleet changes ----

    def device_changed(self, device: DeviceRecord, message: str = "") -> None:
        self.fleet.publish([FleetChange(device, self.connected(device.device_id), time.time(), message)])

    def rollout_changed(self, rollout: RolloutRecord, message: str = "") -> None:
        self.fleet.publish([RolloutChange(rollout, time.time(), message)])
