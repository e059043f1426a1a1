"""In-memory fan-out: who is connected, and live detections to watchers.

A watcher gets a bounded queue. When it is full the newest item is dropped for that
watcher only and counted, so a slow watcher never stalls ingest or other watchers.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from .store import FrameRecord

logger = logging.getLogger(__name__)


@dataclass(eq=False)  # identity semantics: watchers live in a set
class Watcher:
    accepts: Callable[[FrameRecord], FrameRecord | None]
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(maxsize=256))
    dropped: int = 0


class Hub:
    def __init__(self) -> None:
        self.sessions: dict[str, int] = {}  # device id -> open Session streams
        self._watchers: set[Watcher] = set()

    # ---- sessions ----

    def session_opened(self, device_id: str) -> None:
        self.sessions[device_id] = self.sessions.get(device_id, 0) + 1

    def session_closed(self, device_id: str) -> None:
        left = self.sessions.get(device_id, 1) - 1
        if left:
            self.sessions[device_id] = left
        else:
            self.sessions.pop(device_id, None)

    def connected(self, device_id: str) -> bool:
        return device_id in self.sessions

    # ---- detections ----

    def watch(self, accepts: Callable[[FrameRecord], FrameRecord | None], maxsize: int = 256) -> Watcher:
        watcher = Watcher(accepts, asyncio.Queue(maxsize=maxsize))
        self._watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def publish(self, frames: list[FrameRecord]) -> None:
        for watcher in list(self._watchers):
            for frame in frames:
                selected = watcher.accepts(frame)
                if selected is None:
                    continue
                try:
                    watcher.queue.put_nowait(selected)
                except asyncio.QueueFull:
                    watcher.dropped += 1
