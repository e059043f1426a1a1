"""Commands that answer: SendCommand, and the revoke and remove calls that end a device's part in the fleet.

A command goes down each target device's open Session and the call waits (`Hub.send_and_wait`) for
the device's CommandResult, so the operator learns what the device did: DONE, REFUSED with its
reason, TIMED_OUT, or NOT_CONNECTED when it had no Session to send it on. Each outcome is also a
fleet event (the TUI's events screen) and a row in the events table.

Revoking a device refuses its token at once (the store's `principal_for_token`), ends the streams it
has open and keeps its data; removing one deletes its row, and with `purge_data` its detections,
health history and events. The same hardware enrolls again with a valid key after a revoke and keeps
its device id (the hardware id is the key).
"""
from __future__ import annotations

import asyncio
import logging
import time

from edgefleet.v1 import fleet_pb2

from .convert import timestamp
from .errors import FailedPrecondition, InvalidArgument
from .hub import DEFAULT_COMMAND_TIMEOUT_S, Command, CommandState, Hub, Outcome
from .selectors import parse_selector
from .store import DeviceRecord

logger = logging.getLogger(__name__)

MAX_COMMAND_TIMEOUT_MS = 600_000

_STATES = {CommandState.DONE: fleet_pb2.DONE, CommandState.REFUSED: fleet_pb2.REFUSED,
           CommandState.TIMED_OUT: fleet_pb2.TIMED_OUT, CommandState.NOT_CONNECTED: fleet_pb2.NOT_CONNECTED}


def outcome_to_pb(outcome: Outcome) -> fleet_pb2.CommandOutcome:
    return fleet_pb2.CommandOutcome(
        device_id=outcome.device_id, command_id=outcome.command_id, state=_STATES[outcome.state],
        error=outcome.error, detail=outcome.detail, round_trip_ms=outcome.round_trip_ms)


def command_of(request: fleet_pb2.SendCommandRequest) -> Command:
    """The Session command a SendCommandRequest asks for (a fresh command id each call)."""
    action = request.WhichOneof("action")
    if action == "restart_reason":
        return Command("restart", {"reason": request.restart_reason})
    if action == "rollback_reason":
        return Command("rollback", {"reason": request.rollback_reason})
    if action == "ping":
        return Command("ping", {"sent": timestamp(time.time()).ToJsonString()})
    raise InvalidArgument("set one action: restart_reason, rollback_reason or ping")


def timeout_of(timeout_ms: int) -> float:
    """A request's timeout_ms in seconds (0: the default 10 s); InvalidArgument past ten minutes."""
    if timeout_ms > MAX_COMMAND_TIMEOUT_MS:
        raise InvalidArgument(f"timeout_ms must be <= {MAX_COMMAND_TIMEOUT_MS}, got {timeout_ms}")
    return timeout_ms / 1000 if timeout_ms else DEFAULT_COMMAND_TIMEOUT_S


async def targets(db, device_id: str, select: str) -> list[DeviceRecord]:
    """The devices a request names: one by id, or every device whose labels `select` matches.

    Exactly one of the two; a selector that matches nothing is an error that says so (an
    operator who typed it expected devices)."""
    if bool(device_id) == bool(select):
        raise InvalidArgument("name one device (device_id) or a selector (select), not both or neither")
    if device_id:
        return [await db.get_device(device_id)]
    selector = parse_selector(select)
    devices = [d for d in await db.list_devices() if selector.matches(d.labels)]
    if not devices:
        raise FailedPrecondition(f"no device matches the selector {select!r}")
    return devices


class Commands:
    """SendCommand's logic, and the fleet-event side of every answered command."""

    def __init__(self, db, hub: Hub):
        self.db = db
        self.hub = hub

    async def send(self, request: fleet_pb2.SendCommandRequest) -> fleet_pb2.SendCommandResponse:
        """Send the request's command to each target at once and wait for every answer (each up to the timeout)."""
        template = command_of(request)
        timeout_s = timeout_of(request.timeout_ms)
        devices = await targets(self.db, request.device_id, request.select)
        outcomes = await asyncio.gather(*(
            self.send_and_wait(device, Command(template.action, template.payload), timeout_s) for device in devices))
        return fleet_pb2.SendCommandResponse(
            command_id=outcomes[0].command_id if len(outcomes) == 1 else "",
            outcomes=[outcome_to_pb(o) for o in outcomes])

    async def send_and_wait(self, device: DeviceRecord, command: Command,
                            timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S) -> Outcome:
        """`Hub.send_and_wait`, then the outcome recorded as an event and published to the fleet's watchers."""
        outcome = await self.hub.send_and_wait(device.device_id, command, timeout_s)
        reason = command.payload.get("reason")
        what = outcome.describe(command.action + (f" ({reason})" if reason else ""))
        logger.info("command %s: %s", command.command_id, what)
        await self.db.add_event("command", what, device.device_id)
        self.hub.device_changed(device, what)
        return outcome
