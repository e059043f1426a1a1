"""Hub.send_and_wait: each command ends in exactly one outcome, and only its device can answer it; an
answer's snapshot (CaptureFrame) reaches the waiting call, across controller replicas too."""
from __future__ import annotations

import asyncio
import json

import pytest

from edgefleet.common.records import SnapshotRecord
from edgefleet.fleet.hub import FORWARDED_SNAPSHOT, Command, CommandState, Hub, pack_forwarded, unpack_forwarded
from edgefleet.fleet.replicas import Peers, Replica


def run(coro):
    return asyncio.run(coro)


async def answer_when_sent(hub: Hub, device_id: str, ok: bool, error: str = "", detail: str = "") -> None:
    commands = hub.open_session(device_id)
    command = await commands.get()
    hub.answered(device_id, command.command_id, ok, error, detail)


def test_an_answered_command_is_done_with_its_round_trip():
    async def scenario():
        hub = Hub()
        device = asyncio.create_task(answer_when_sent(hub, "d1", True, detail="pong"))
        await asyncio.sleep(0)  # the device's Session opens
        outcome = await hub.send_and_wait("d1", Command("ping", {}), timeout_s=5)
        await device
        return outcome

    outcome = run(scenario())
    assert (outcome.state, outcome.detail, outcome.error) == (CommandState.DONE, "pong", "")
    assert outcome.round_trip_ms > 0 and outcome.ok


def test_a_refusal_carries_the_devices_reason():
    async def scenario():
        hub = Hub()
        device = asyncio.create_task(answer_when_sent(hub, "d1", False, "no previous engine to roll back to"))
        await asyncio.sleep(0)
        outcome = await hub.send_and_wait("d1", Command("rollback", {}), timeout_s=5)
        await device
        return outcome

    outcome = run(scenario())
    assert (outcome.state, outcome.error) == (CommandState.REFUSED, "no previous engine to roll back to")
    assert not outcome.ok
    assert outcome.describe("rollback") == "rollback on d1: refused: no previous engine to roll back to"


def test_no_session_is_not_connected_and_nothing_waits():
    hub = Hub()
    outcome = run(hub.send_and_wait("d1", Command("ping", {}), timeout_s=5))
    assert outcome.state is CommandState.NOT_CONNECTED and outcome.round_trip_ms == 0
    assert not hub._pending


def test_silence_times_out_and_a_late_answer_is_ignored():
    async def scenario():
        hub = Hub()
        commands = hub.open_session("d1")
        outcome = await hub.send_and_wait("d1", Command("restart", {}), timeout_s=0.05)
        late = hub.answered("d1", (await commands.get()).command_id, True)
        return outcome, late, hub

    outcome, late, hub = run(scenario())
    assert (outcome.state, outcome.error) == (CommandState.TIMED_OUT, "timed out after 0.05 s")
    assert late is False and not hub._pending


def test_another_device_cannot_answer_for_the_target():
    async def scenario():
        hub = Hub()
        commands = hub.open_session("d1")
        waiting = asyncio.create_task(hub.send_and_wait("d1", Command("ping", {}), timeout_s=0.2))
        command = await commands.get()
        forged = hub.answered("d2", command.command_id, True)
        return forged, await waiting

    forged, outcome = run(scenario())
    assert forged is False and outcome.state is CommandState.TIMED_OUT


def test_a_session_that_closes_before_answering_ends_the_wait_at_once():
    async def scenario():
        hub = Hub()
        commands = hub.open_session("d1")
        waiting = asyncio.create_task(hub.send_and_wait("d1", Command("ping", {}), timeout_s=30))
        await commands.get()
        hub.close_session("d1", commands)
        return await asyncio.wait_for(waiting, 5)

    outcome = run(scenario())
    assert (outcome.state, outcome.error) == (CommandState.TIMED_OUT, "the device's Session closed before it answered")


def test_close_streams_signals_every_open_stream_of_the_device_only():
    async def scenario():
        hub = Hub()
        session, publish, other = hub.stream_opened("d1"), hub.stream_opened("d1"), hub.stream_opened("d2")
        closed = hub.close_streams("d1", "device d1 was revoked")
        hub.stream_closed("d1", session)
        return closed, session, publish, other, hub.close_streams("d1", "again")

    closed, session, publish, other, again = run(scenario())
    assert closed == 2 and again == 0
    assert session.result() == publish.result() == "device d1 was revoked"
    assert not other.done()


# ---- CaptureFrame: the answer carries a picture, here and across replicas ----

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40 + b"\xff\xd9"  # > 8,000 bytes: past a notification's size


def live(jpeg: bytes = JPEG) -> SnapshotRecord:
    return SnapshotRecord("cam0", "", "live", "", 1_700_000_000.25, jpeg, 0.0, 0, device_id="forged")


def test_an_answers_snapshot_reaches_the_waiting_call_with_the_answering_devices_id():
    async def scenario():
        hub = Hub()
        commands = hub.open_session("d1")
        waiting = asyncio.create_task(hub.send_and_wait("d1", Command("capture_frame", {}), timeout_s=5))
        command = await commands.get()
        hub.answered("d1", command.command_id, True, snapshot=live())
        return await waiting

    outcome = run(scenario())
    assert outcome.state is CommandState.DONE and outcome.snapshot is not None
    assert (outcome.snapshot.jpeg, outcome.snapshot.device_id, outcome.snapshot.kind) == (JPEG, "d1", "live")


class LinkedPeers(Peers):
    """Two replicas in one process: each message goes through JSON (as PgPeers sends it) to the other's
    `Replica.handle`, the receiving side every transport shares."""

    def __init__(self, replica_id: str) -> None:
        super().__init__(replica_id)
        self.other: LinkedPeers | None = None
        self.replica: Replica | None = None

    def _post(self, message: dict) -> None:
        text = json.dumps({"from": self.replica_id, **message})
        assert self.other is not None and self.other.replica is not None
        asyncio.get_running_loop().create_task(self.other.replica.handle(json.loads(text)))

    def session_of(self, device_id: str) -> str | None:
        return self.replica.sessions.get(device_id) if self.replica else None

    def session_opened(self, device_id: str) -> None:
        self._post({"k": "session", "device_id": device_id, "open": True})

    def forward_command(self, replica_id: str, device_id: str, command: Command) -> None:
        self._post({"k": "cmd", "to": replica_id, "device_id": device_id, "action": command.action,
                    "payload": command.payload, "command_id": command.command_id})

    def forward_answer(self, replica_id: str, device_id: str, command_id: str, ok: bool, error: str,
                       detail: str) -> None:
        self._post({"k": "answer", "to": replica_id, "device_id": device_id, "command_id": command_id, "ok": ok,
                    "error": error, "detail": detail})


def linked_hubs() -> tuple[Hub, Hub]:
    a, b = LinkedPeers("r-a"), LinkedPeers("r-b")
    a.other, b.other = b, a
    hubs = Hub(peers=a), Hub(peers=b)
    a.replica, b.replica = Replica(hubs[0], None, "r-a"), Replica(hubs[1], None, "r-b")  # type: ignore[arg-type]
    return hubs


@pytest.mark.parametrize("ok, detail, snapshot", [
    (True, "frame of cam0", live()),
    (True, "pong", None),
    (False, "", None),
])
def test_an_answer_forwarded_between_replicas_keeps_its_snapshot_and_detail(ok, detail, snapshot):
    async def scenario():
        near, far = linked_hubs()
        commands = far.open_session("d1")  # the device's Session is on the other replica
        await asyncio.sleep(0.01)
        waiting = asyncio.create_task(near.send_and_wait("d1", Command("capture_frame", {"stream_id": "cam0"}), 5))
        command = await asyncio.wait_for(commands.get(), 5)
        far.answered("d1", command.command_id, ok, "" if ok else "no such stream: cam9", detail, snapshot)
        return command, await waiting

    command, outcome = run(scenario())
    assert command.payload == {"stream_id": "cam0"}
    assert outcome.state is (CommandState.DONE if ok else CommandState.REFUSED)
    assert outcome.detail == detail and outcome.error == ("" if ok else "no such stream: cam9")
    if snapshot is None:
        assert outcome.snapshot is None
    else:
        assert outcome.snapshot == SnapshotRecord("cam0", "", "live", "", 1_700_000_000.25, JPEG, 0.0, 0, "d1")


def test_a_plain_detail_is_not_mistaken_for_a_packed_one():
    assert unpack_forwarded("loop restarted in process") == ("loop restarted in process", None)
    assert unpack_forwarded(pack_forwarded("x", None)) == ("x", None)
    assert unpack_forwarded(FORWARDED_SNAPSHOT + "{not json") == ("", None)
