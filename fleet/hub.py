"""In-memory fan-out: open device sessions, their commands and answers, live detections and fleet changes.

A watcher gets a bounded queue. When it is full the newest item is dropped for that
watcher only and counted, so a slow watcher never stalls ingest or other watchers.

A command sent with `send_and_wait` waits for the device's CommandResult, which the gateway
hands to `answered`; `close_streams` ends a device's open Session and PublishDetections
streams (a revoked device must not keep talking on streams it opened before).

With several controller replicas (`fleet.replicas`), a device's Session may be open on another one:
the Hub's `peers` forward commands there and answers back, and carry fleet changes, committed frames
and stream closings to the other replicas' Hubs, which publish them to their own watchers.
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import enum
import functools
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from edgefleet.common.records import SnapshotRecord

from .detection_store import FrameRecord
from .replicas import Peers
from .rollout_store import RolloutRecord
from .store import DeviceRecord

if TYPE_CHECKING:
    from .metrics import ControllerMetrics

logger = logging.getLogger(__name__)

T = TypeVar("T")

COMMAND_QUEUE_SIZE = 64
DEFAULT_COMMAND_TIMEOUT_S = 10.0


@dataclass(eq=False)  # identity semantics: watchers live in a set
class Watcher(Generic[T]):
    accepts: Callable[[T], T | None]
    queue: asyncio.Queue
    dropped: int = 0


class Topic(Generic[T]):
    """Publishes items to every watcher whose `accepts` returns something for them.

    `on_drop`, when given, is called once per item dropped for a full watcher (a metrics counter).
    """

    def __init__(self, on_drop: Callable[[], None] | None = None,
                 on_watched: Callable[[bool], None] | None = None) -> None:
        self._watchers: set[Watcher[T]] = set()
        self._on_drop = on_drop
        self._on_watched = on_watched  # called when the watchers go from none to some (True) and back

    @property
    def watched(self) -> bool:
        return bool(self._watchers)

    def watch(self, accepts: Callable[[T], T | None] = lambda item: item, maxsize: int = 256) -> Watcher[T]:
        watcher = Watcher(accepts, asyncio.Queue(maxsize=maxsize))
        self._watchers.add(watcher)
        if len(self._watchers) == 1 and self._on_watched is not None:
            self._on_watched(True)
        return watcher

    def unwatch(self, watcher: Watcher[T]) -> None:
        if watcher in self._watchers:
            self._watchers.discard(watcher)
            if not self._watchers and self._on_watched is not None:
                self._on_watched(False)

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
class DeviceRemoved:
    """A device that RemoveDevice deleted, and what happened in words."""

    device_id: str
    time: float
    message: str = ""


@dataclass(frozen=True)
class FleetNote:
    """Something that happened in words only (an audited operator call): a fleet event message."""

    time: float
    message: str


@dataclass(frozen=True)
class Command:
    """A command for a device's Session: `action` names a `Command` oneof field, `payload` is its value."""

    action: str
    payload: dict[str, Any]
    command_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])


class CommandState(enum.Enum):
    """How a command ended for one device (edgefleet.v1.CommandState)."""

    DONE = "done"
    REFUSED = "refused"
    TIMED_OUT = "timed out"
    NOT_CONNECTED = "not connected"


@dataclass(frozen=True)
class Outcome:
    """One device's answer to a command, as the controller saw it; `round_trip_ms` is 0 unless it answered."""

    device_id: str
    command_id: str
    state: CommandState
    error: str = ""
    detail: str = ""
    round_trip_ms: float = 0.0
    snapshot: SnapshotRecord | None = None  # CaptureFrame's picture, device_id filled

    @property
    def ok(self) -> bool:
        return self.state is CommandState.DONE

    def describe(self, action: str) -> str:
        """The outcome in words, for the fleet events and the CLI."""
        what = {CommandState.DONE: f"done in {self.round_trip_ms:.0f} ms",
                CommandState.REFUSED: f"refused: {self.error}",
                CommandState.TIMED_OUT: f"no answer: {self.error}",
                CommandState.NOT_CONNECTED: "not sent: the device has no open Session"}[self.state]
        detail = f" ({self.detail})" if self.detail and self.ok else ""
        return f"{action} on {self.device_id}: {what}{detail}"


@dataclass(frozen=True)
class _Answer:
    ok: bool
    error: str
    detail: str
    snapshot: SnapshotRecord | None = None


FORWARDED_SNAPSHOT = "\x00snapshot:"
"""How a forwarded answer carries a picture to the replica that waits for it: its `detail` is this prefix
and a JSON object with the detail and the snapshot (base64 JPEG). Peers carry `detail` as text of any size
(PgPeers moves a message too big for a notification through its relay table)."""


def pack_forwarded(detail: str, snapshot: SnapshotRecord | None) -> str:
    if snapshot is None:
        return detail
    fields = {**dataclasses.asdict(snapshot), "jpeg": base64.b64encode(snapshot.jpeg).decode("ascii")}
    return FORWARDED_SNAPSHOT + json.dumps({"detail": detail, "snapshot": fields})


def unpack_forwarded(detail: str) -> tuple[str, SnapshotRecord | None]:
    """`pack_forwarded` undone; a plain detail comes back as it is, with no snapshot."""
    if not detail.startswith(FORWARDED_SNAPSHOT):
        return detail, None
    try:
        packed = json.loads(detail[len(FORWARDED_SNAPSHOT):])
        fields = packed["snapshot"]
        fields["jpeg"] = base64.b64decode(fields["jpeg"])
        return packed["detail"], SnapshotRecord(**fields)
    except (ValueError, KeyError, TypeError) as err:
        logger.warning("a forwarded answer's snapshot could not be read: %s", err)
        return "", None


class Hub:
    """`peers`: the other controller replicas (`fleet.replicas.Peers`: none, for a lone controller)."""

    def __init__(self, metrics: ControllerMetrics | None = None, peers: Peers | None = None) -> None:
        def counter(stream: str) -> Callable[[], None] | None:
            return None if metrics is None else functools.partial(metrics.watcher_dropped.inc, stream=stream)

        self.peers = peers or Peers()
        self.detections: Topic[FrameRecord] = Topic(counter("detections"),
                                                    functools.partial(self.peers.watching, "detections"))
        self.fleet: Topic[FleetChange | RolloutChange | FleetNote | DeviceRemoved] = Topic(
            counter("fleet"), functools.partial(self.peers.watching, "fleet"))
        self._sessions: dict[str, list[asyncio.Queue]] = {}  # device id -> one command queue per open Session
        self._pending: dict[tuple[str, str], asyncio.Future[_Answer]] = {}  # (device, command id) -> its answer
        self._streams: dict[str, set[asyncio.Future[str]]] = {}  # device id -> its open streams' close signals
        self._forwarded: dict[tuple[str, str], str] = {}  # (device, command id) -> the replica waiting for it

    # ---- sessions ----

    def open_session(self, device_id: str) -> asyncio.Queue:
        """Register an open Session; the returned queue receives the commands sent to the device."""
        commands: asyncio.Queue = asyncio.Queue(maxsize=COMMAND_QUEUE_SIZE)
        self._sessions.setdefault(device_id, []).append(commands)
        if len(self._sessions[device_id]) == 1:
            self.peers.session_opened(device_id)
        return commands

    def close_session(self, device_id: str, commands: asyncio.Queue) -> None:
        """Forget a Session that ended; with the device's last one, its unanswered commands end too."""
        queues = self._sessions.get(device_id, [])
        if commands in queues:
            queues.remove(commands)
        if queues:
            return
        if self._sessions.pop(device_id, None) is not None:
            self.peers.session_closed(device_id)
        gone = "the device's Session closed before it answered"
        for key in [key for key in self._forwarded if key[0] == device_id]:
            self._answer_forwarded(key, False, gone, "", None)
        for (device, _), answer in list(self._pending.items()):
            if device == device_id and not answer.done():
                answer.set_exception(ConnectionError(gone))

    def connected(self, device_id: str) -> bool:
        """A Session of the device is open here or on another replica."""
        return device_id in self._sessions or self.peers.session_of(device_id) is not None

    def send(self, device_id: str, command: Command) -> int:
        """Queue the command on every open Session of the device, or forward it to the replica that holds
        its Session; returns how many took it (a forwarded command counts once)."""
        if device_id not in self._sessions:
            replica = self.peers.session_of(device_id)
            if replica is None:
                return 0
            self.peers.forward_command(replica, device_id, command)
            return 1
        return self._send_local(device_id, command)

    def deliver_forwarded(self, device_id: str, command: Command, origin: str) -> None:
        """A command another replica forwarded to the device's Session here; its answer goes back there."""
        key = (device_id, command.command_id)
        self._forwarded[key] = origin
        if not self._send_local(device_id, command):
            self._answer_forwarded(key, False, "the device's Session moved to another controller replica", "",
                                   None)

    def _answer_forwarded(self, key: tuple[str, str], ok: bool, error: str, detail: str,
                          snapshot: SnapshotRecord | None) -> None:
        origin = self._forwarded.pop(key, None)
        if origin is not None:
            self.peers.forward_answer(origin, key[0], key[1], ok, error, pack_forwarded(detail, snapshot))

    def _send_local(self, device_id: str, command: Command) -> int:
        delivered = 0
        for commands in self._sessions.get(device_id, []):
            try:
                commands.put_nowait(command)
                delivered += 1
            except asyncio.QueueFull:
                logger.warning("session of %s is not reading commands; dropped %s", device_id, command.action)
        return delivered

    # ---- answers ----

    async def send_and_wait(self, device_id: str, command: Command,
                            timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S) -> Outcome:
        """Send `command` to the device's open Session(s) and wait up to `timeout_s` for its CommandResult.

        NOT_CONNECTED when no Session took it (nothing was sent); TIMED_OUT when no answer came in
        time or the device disconnected first; DONE or REFUSED (with the device's reason) otherwise.
        The round trip is measured here, from sending to the answer's arrival.
        """
        key = (device_id, command.command_id)
        answer: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()
        self._pending[key] = answer
        try:
            sent = time.perf_counter()
            if not self.send(device_id, command):
                return Outcome(device_id, command.command_id, CommandState.NOT_CONNECTED)
            try:
                got = await asyncio.wait_for(asyncio.shield(answer), timeout_s)
            except TimeoutError:
                return Outcome(device_id, command.command_id, CommandState.TIMED_OUT,
                               f"timed out after {timeout_s:g} s")
            except ConnectionError as err:
                return Outcome(device_id, command.command_id, CommandState.TIMED_OUT, str(err))
            ms = (time.perf_counter() - sent) * 1000
            state = CommandState.DONE if got.ok else CommandState.REFUSED
            return Outcome(device_id, command.command_id, state, got.error, got.detail, ms, got.snapshot)
        finally:
            self._pending.pop(key, None)
            if answer.done() and not answer.cancelled():
                answer.exception()  # retrieved: no "never retrieved" log for a late disconnect
            else:
                answer.cancel()

    def answered(self, device_id: str, command_id: str, ok: bool, error: str = "", detail: str = "",
                 snapshot: SnapshotRecord | None = None) -> bool:
        """A CommandResult from the device's Session (or another replica's forwarded answer, whose
        `detail` may carry a snapshot: `pack_forwarded`); False when nobody waits for it (fire-and-forget
        commands, or one that timed out). Only the device the command went to can answer it; a
        snapshot's device_id is that device's."""
        if snapshot is None:
            detail, snapshot = unpack_forwarded(detail)
        if snapshot is not None:
            snapshot = dataclasses.replace(snapshot, device_id=device_id)
        answer = self._pending.get((device_id, command_id))
        if answer is None and (device_id, command_id) in self._forwarded:
            self._answer_forwarded((device_id, command_id), ok, error, detail, snapshot)
            return True
        if answer is None or answer.done():
            return False
        answer.set_result(_Answer(ok, error, detail, snapshot))
        return True

    # ---- closing a device's streams ----

    def stream_opened(self, device_id: str) -> asyncio.Future[str]:
        """Register an open Session or PublishDetections stream of the device: the returned future gets
        the reason when `close_streams` wants it to end. Call `stream_closed` when it ends."""
        closing: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._streams.setdefault(device_id, set()).add(closing)
        return closing

    def stream_closed(self, device_id: str, closing: asyncio.Future[str]) -> None:
        streams = self._streams.get(device_id, set())
        streams.discard(closing)
        if not streams:
            self._streams.pop(device_id, None)

    def close_streams(self, device_id: str, reason: str) -> int:
        """Ask every open stream of the device to end with `reason` (UNAUTHENTICATED), here and on the other
        replicas; how many there were here."""
        self.peers.close_streams(device_id, reason)
        return self.close_local_streams(device_id, reason)

    def close_local_streams(self, device_id: str, reason: str) -> int:
        streams = self._streams.pop(device_id, set())
        for closing in streams:
            if not closing.done():
                closing.set_result(reason)
        return len(streams)

    # ---- fleet changes ----

    # Each change is published to this replica's watchers and announced to the other replicas, which
    # publish it to theirs (`fleet.replicas.Replica`); `local_only` is for what every replica sees for
    # itself (presence, which each one computes from the shared last-seen times).

    def device_changed(self, device: DeviceRecord, message: str = "", *, local_only: bool = False) -> None:
        """`message` empty: a routine change (a heartbeat), told to the other replicas' fleet watchers in batches."""
        self.publish_device(device, message)
        if local_only:
            return
        if message:
            self.peers.announce("device", device_id=device.device_id, message=message)
        else:
            self.peers.device_touched(device.device_id)

    def device_removed(self, device_id: str, message: str = "") -> None:
        self.publish_removed(device_id, message)
        self.peers.announce("removed", device_id=device_id, message=message)

    def rollout_changed(self, rollout: RolloutRecord, message: str = "") -> None:
        self.publish_rollout(rollout, message)
        self.peers.announce("rollout", rollout_id=rollout.rollout_id, message=message)

    def note(self, message: str) -> None:
        self.publish_note(message)
        self.peers.announce("note", message=message)

    def frames_committed(self, device_id: str, frames: list[FrameRecord]) -> None:
        self.detections.publish(frames)
        if frames:
            self.peers.frames_committed(device_id, frames)

    def publish_device(self, device: DeviceRecord, message: str = "") -> None:
        self.fleet.publish([FleetChange(device, self.connected(device.device_id), time.time(), message)])

    def publish_removed(self, device_id: str, message: str = "") -> None:
        self.fleet.publish([DeviceRemoved(device_id, time.time(), message)])

    def publish_rollout(self, rollout: RolloutRecord, message: str = "") -> None:
        self.fleet.publish([RolloutChange(rollout, time.time(), message)])

    def publish_note(self, message: str) -> None:
        self.fleet.publish([FleetNote(time.time(), message)])
