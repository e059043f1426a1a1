"""Hub.send_and_wait: each command ends in exactly one outcome, and only its device can answer it."""
from __future__ import annotations

import asyncio

from edgefleet.fleet.hub import Command, CommandState, Hub


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
