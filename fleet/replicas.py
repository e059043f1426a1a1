"""Controller replicas: what one controller process tells the others, and what it does with what they tell it.

A lone controller (the SQLite file) has no peers: `Peers` is that case, always the leader, every
device's Session local. On PostgreSQL several controllers share the database and each agent holds
its Session with one of them; `fleet.pg.peers.PgPeers` carries these messages between them (LISTEN/
NOTIFY) and holds the leader lease. The `Hub` asks its `Peers`:

- which replica holds a device's Session (`session_of`), to send a command there (`forward_command`)
  and route the device's answer back to the replica that waits for it (`forward_answer`);
- to tell the others what its own watchers see (`announce`: a device changed or was removed, a
  rollout changed, an audited call), so WatchFleet on any replica shows the whole fleet; routine
  device changes (heartbeats, `device_touched`) and committed frames (`frames_committed`) only while
  another replica watches the fleet or detections, the former batched once a second;
- to end a revoked device's streams wherever they are (`close_streams`).

`Replica.handle` is the receiving side, shared by every transport: it turns a peer's message into
the local Hub's action, reading the changed device, rollout or frames from the shared store.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .async_store import AsyncStore
    from .detection_store import FrameRecord
    from .hub import Command, Hub

logger = logging.getLogger(__name__)

LeaderHook = Callable[[bool], Awaitable[None]]
"""Called with True when this replica becomes the leader, with False when it stops being it."""


def new_replica_id() -> str:
    return f"r-{uuid.uuid4().hex[:8]}"


class Peers:
    """No peers: a lone controller. Subclasses carry the messages to other replicas."""

    def __init__(self, replica_id: str | None = None) -> None:
        self.replica_id = replica_id or new_replica_id()
        self.address = ""  # HOST:PORT it serves on, once it does
        self.leader = True
        self._lock = asyncio.Lock()
        self._on_leader: list[LeaderHook] = []

    def on_leader(self, hook: LeaderHook) -> None:
        """Run `hook(True)` once this replica leads (at `start` for a lone one), `hook(False)` when it stops."""
        self._on_leader.append(hook)

    async def _set_leader(self, leader: bool) -> None:
        self.leader = leader
        for hook in self._on_leader:
            try:
                await hook(leader)
            except Exception:  # noqa: BLE001 - one job failing to start or stop must not stop the others
                logger.exception("leadership hook %s failed", hook)

    async def start(self, hub: Hub, db: AsyncStore) -> None:
        await self._set_leader(True)

    async def stop(self) -> None:
        await self._set_leader(False)

    @contextlib.asynccontextmanager
    async def lock(self) -> AsyncIterator[None]:
        """Held while a rollout changes state: on one replica, an asyncio lock; across replicas, also a
        database lock, so two replicas never advance the same rollout at once."""
        async with self._lock:
            yield

    # ---- what the Hub asks ----

    def session_of(self, device_id: str) -> str | None:
        """The other replica that holds the device's Session; None when none does (or it is local)."""
        return None

    def session_opened(self, device_id: str) -> None:
        """This replica now holds a Session of the device."""

    def session_closed(self, device_id: str) -> None:
        """This replica's last Session of the device ended."""

    def forward_command(self, replica_id: str, device_id: str, command: Command) -> None:
        """Send `command` to the replica that holds the device's Session; the answer comes back here."""

    def forward_answer(self, replica_id: str, device_id: str, command_id: str, ok: bool, error: str,
                       detail: str) -> None:
        """The device's answer to a command `replica_id` forwarded."""

    def announce(self, kind: str, **fields: Any) -> None:
        """Tell the other replicas' watchers: kind device/removed/rollout/note (see `Replica.handle`)."""

    def close_streams(self, device_id: str, reason: str) -> None:
        """End the device's streams on the other replicas."""

    def frames_committed(self, device_id: str, frames: list[FrameRecord]) -> None:
        """The device's `frames` are committed (for the other replicas' detection watchers)."""

    def device_touched(self, device_id: str) -> None:
        """A routine change of the device (a heartbeat): told to the replicas that watch the fleet, batched."""

    def watching(self, topic: str, watching: bool) -> None:
        """This replica's watchers of `topic` (TOPICS) went from none to some (True) or back (False)."""


TOPICS = ("fleet", "detections")
"""What a replica may watch: WatchFleet's changes, WatchDetections' frames. Routine device changes and
committed frames go only to the replicas that watch them."""


class Replica:
    """The receiving side: a peer's message, done on the local Hub. One task calls `handle` in arrival
    order, so a device's Session opening is known before the change that says it connected."""

    def __init__(self, hub: Hub, db: AsyncStore, replica_id: str) -> None:
        self.hub = hub
        self.db = db
        self.replica_id = replica_id
        self.sessions: dict[str, str] = {}  # device id -> the other replica holding its Session
        self.watchers: dict[str, dict[str, float]] = {t: {} for t in TOPICS}  # topic -> replica -> when it said so

    def wants(self, topic: str, now: float, fresh_s: float) -> bool:
        """Another replica said, less than `fresh_s` ago, that it watches `topic`."""
        return any(now - said < fresh_s for said in self.watchers[topic].values())

    async def handle(self, message: dict) -> None:
        sender = message.get("from")
        if sender == self.replica_id:
            return
        kind = message.get("k")
        handler = self._handlers().get(str(kind))
        if handler is None:
            logger.warning("unknown message %r from replica %s", kind, sender)
            return
        await handler(message)

    def _handlers(self) -> dict[str, Callable[[dict], Awaitable[None]]]:
        return {"session": self._session, "cmd": self._command, "answer": self._answer, "close": self._close,
                "device": self._device, "devices": self._devices, "removed": self._removed,
                "rollout": self._rollout, "note": self._note, "frames": self._frames, "watching": self._watching}

    def _for_me(self, message: dict) -> bool:
        return message.get("to") == self.replica_id

    async def _session(self, message: dict) -> None:
        device_id, sender = message["device_id"], message["from"]
        if message["open"]:
            self.sessions[device_id] = sender
        elif self.sessions.get(device_id) == sender:
            del self.sessions[device_id]

    async def _command(self, message: dict) -> None:
        if self._for_me(message):
            from .hub import Command

            command = Command(message["action"], message["payload"], message["command_id"])
            self.hub.deliver_forwarded(message["device_id"], command, message["from"])

    async def _answer(self, message: dict) -> None:
        if self._for_me(message):
            self.hub.answered(message["device_id"], message["command_id"], message["ok"], message["error"],
                              message["detail"])

    async def _close(self, message: dict) -> None:
        self.hub.close_local_streams(message["device_id"], message["reason"])

    async def _device(self, message: dict) -> None:
        from .errors import NotFound

        try:
            device = await self.db.get_device(message["device_id"])
        except NotFound:  # removed meanwhile: its DeviceRemoved follows
            return
        self.hub.publish_device(device, message.get("message", ""))

    async def _devices(self, message: dict) -> None:
        """Routine changes of these devices (heartbeats) since the sender's last such message."""
        if not self.hub.fleet.watched:
            return
        ids = set(message["ids"])
        for device in await self.db.list_devices():
            if device.device_id in ids:
                self.hub.publish_device(device)

    async def _removed(self, message: dict) -> None:
        self.hub.publish_removed(message["device_id"], message.get("message", ""))

    async def _rollout(self, message: dict) -> None:
        rollout = await self.db.get_rollout(message["rollout_id"])
        self.hub.publish_rollout(rollout, message.get("message", ""))

    async def _note(self, message: dict) -> None:
        self.hub.publish_note(message["message"])

    async def _frames(self, message: dict) -> None:
        if not self.hub.detections.watched:
            return
        first, last = int(message["first"]), int(message["last"])
        # after_sequence 0 asks for the newest records: for a device's first frames read enough of them
        limit = min(last - first + 1, 10_000) if first > 1 else 10_000
        frames, _ = await self.db.list_detections(message["device_id"], after_sequence=first - 1, limit=limit)
        self.hub.detections.publish([f for f in frames if first <= f.sequence <= last])

    async def _watching(self, message: dict) -> None:
        watchers = self.watchers.get(message["topic"])
        if watchers is None:
            return
        if message["watching"]:
            watchers[message["from"]] = time.time()
        else:
            watchers.pop(message["from"], None)
