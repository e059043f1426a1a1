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
    devices = await db.devices_matching(parse_selector(select))
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

    async def deliver_plan(self, device: DeviceRecord, override: dict, previous: dict) -> None:
        """Send a stored plan override (empty: cleared) to the connected device and wait for its answer.

        Not connected: it goes down at the device's next Session (nothing to wait for). Refused: the
        previous override is stored again, and FailedPrecondition carries the device's reason. No answer
        in time: FailedPrecondition says so; the override stays stored and goes down again at the next
        Session."""
        if not self.hub.connected(device.device_id):
            return
        outcome = await self.send_and_wait(device, Command("set_plan", override or {"clear": True}))
        if outcome.state is CommandState.REFUSED:
            await self.db.set_plan_override(device.device_id, previous)
            raise FailedPrecondition(f"device {device.device_id} refused the plan override: {outcome.error}; "
                                     "its previous override stays")
        if outcome.state is CommandState.TIMED_OUT:
            raise FailedPrecondition(f"device {device.device_id} did not answer the plan override ({outcome.error}); "
                                     "it is stored and goes down again when the device reconnects")

    async def revoke(self, device_id: str, reason: str) -> DeviceRecord:
        """Refuse the device's token from now on, end its open Session and PublishDetections streams
        (UNAUTHENTICATED), keep its data. Revoking a revoked device again changes nothing."""
        if not device_id:
            raise InvalidArgument("device_id is empty")
        device = await self.db.revoke_device(device_id)
        why = f"device {device_id} was revoked" + (f" ({reason})" if reason else "")
        closed = self.hub.close_streams(device_id, why + "; enroll it again with an enrollment key to return")
        what = f"{device.hostname} ({device_id}) revoked" + (f": {reason}" if reason else "")
        await self.db.add_event("device", what + f"; {closed} open stream(s) closed", device_id)
        self.hub.device_changed(device, what)
        logger.info("%s; %d open stream(s) closed", what, closed)
        return device

    async def remove(self, device_id: str, purge_data: bool) -> int:
        """Delete the device; with `purge_data` its detections, health history and events too (how many
        detections, returned). A connected device that is not revoked is refused: revoke it first (or
        stop its agent), or it would be talking to a controller that no longer knows it."""
        if not device_id:
            raise InvalidArgument("device_id is empty")
        device = await self.db.get_device(device_id)
        if self.hub.connected(device_id) and device.revoked is None:
            raise FailedPrecondition(f"device {device_id} is connected: revoke it first "
                                     f"(edgefleet device revoke {device_id}) or stop its agent, then remove it")
        deleted = await self.db.remove_device(device_id, purge_data)
        what = f"{device.hostname} ({device_id}) removed" + (
            f" with its data ({deleted} detection record(s) deleted)" if purge_data else "; its data is kept")
        await self.db.add_event("device", what, "" if purge_data else device_id)
        self.hub.device_removed(device_id, what)
        logger.info("%s", what)
        return deleted
