"""Device status (ONLINE, STALE, OFFLINE) from the age of the last message, and its changes.

Status follows from time alone: a device that goes silent sends nothing that could
announce it, so `PresenceMonitor` looks at every device's last-seen time once per
`Presence.sweep_interval_s` and publishes a fleet change when a status flips.
"""
from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from dataclasses import dataclass

from .errors import ConfigError
from .hub import Hub

logger = logging.getLogger(__name__)

STALE_AFTER_INTERVALS = 3
OFFLINE_AFTER_INTERVALS = 10


class Status(enum.Enum):
    ONLINE = "online"
    STALE = "stale"
    OFFLINE = "offline"


@dataclass(frozen=True)
class Presence:
    """Thresholds on the age of a device's last hello, heartbeat or detection batch.

    - `stale_after_s`: older than this, the device is STALE (missed a few heartbeats). Lower
      flags trouble sooner; too close to the heartbeat interval flaps on slow cellular links.
    - `offline_after_s`: older than this, OFFLINE. Never seen at all is OFFLINE too.

    `for_heartbeat()` defaults them to 3 and 10 heartbeat intervals.
    """

    heartbeat_interval_s: float
    stale_after_s: float
    offline_after_s: float

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_interval_s:
            raise ConfigError(f"heartbeat interval must be > 0 s, got {self.heartbeat_interval_s}")
        if not 0 < self.stale_after_s < self.offline_after_s:
            raise ConfigError(
                f"need 0 < stale-after < offline-after, got {self.stale_after_s} s and "
                f"{self.offline_after_s} s"
            )

    @classmethod
    def for_heartbeat(
        cls,
        heartbeat_interval_s: float,
        stale_after_s: float | None = None,
        offline_after_s: float | None = None,
    ) -> Presence:
        return cls(
            heartbeat_interval_s,
            stale_after_s or STALE_AFTER_INTERVALS * heartbeat_interval_s,
            offline_after_s or OFFLINE_AFTER_INTERVALS * heartbeat_interval_s,
        )

    @property
    def sweep_interval_s(self) -> float:
        """How often the monitor looks: a flip is reported at most this late (and at most 1 s)."""
        return min(1.0, self.stale_after_s / 4)

    def status(self, last_seen: float | None, now: float | None = None) -> Status:
        if last_seen is None:
            return Status.OFFLINE
        age = (time.time() if now is None else now) - last_seen
        if age <= self.stale_after_s:
            return Status.ONLINE
        if age <= self.offline_after_s:
            return Status.STALE
        return Status.OFFLINE


class PresenceMonitor:
    """`start()` sweeps in the background until `stop()`; each status flip becomes a fleet change."""

    def __init__(self, db, hub: Hub, presence: Presence):
        self.db = db
        self.hub = hub
        self.presence = presence
        self._known: dict[str, Status] = {}
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="presence")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.sweep()
            except Exception:  # noqa: BLE001 - one failed sweep must not end presence reporting
                logger.exception("presence sweep failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.presence.sweep_interval_s)

    async def sweep(self) -> None:
        """Publish the devices whose status changed since the last sweep.

        A device seen for the first time is only recorded: its enrollment was announced already.
        """
        now = time.time()
        for device_id, last_seen in (await self.db.last_seen_by_device()).items():
            status = self.presence.status(last_seen, now)
            before = self._known.get(device_id)
            self._known[device_id] = status
            if before is None or before == status:
                continue
            device = await self.db.get_device(device_id)
            logger.info("%s is %s (was %s)", device_id, status.name, before.name)
            self.hub.device_changed(device, f"{device.hostname} ({device_id}) is {status.name}", local_only=True)
