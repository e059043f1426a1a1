"""Desired configuration, the device twin: the operator's document for a device vs what it runs.

`SetDesiredConfig` stores a new version of a YAML document of agent config keys for one device or
every device a selector matches (each device counts its own versions: the next one is above every
version it stored or the device reported), and sends it down each open Session as ApplyConfig.
A device that is offline gets it when its next Session opens: the hello says which version the
device runs (ConfigStatus), and a desired version it has neither applied nor refused goes down
again; the documents live in the database, so a restarted controller does the same.

The device answers each ApplyConfig with a ConfigStatus (applied or refused, with the reasons),
stored as the device's `config_status`; a call with `timeout_ms` waits for these answers.
`clear` stores an empty document as the next version: the device goes back to its own agent.yaml
and flags (an empty document means exactly that on the device).

The controller checks what it can without the device's own config (agent.desired.check_document:
YAML, keys, device-only keys, each value's type and bounds); settings that conflict with the
device's file or flags are the device's to refuse.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from edgefleet.agent.desired import check_document
from edgefleet.v1 import fleet_pb2

from .commands import outcome_to_pb, targets, timeout_of
from .convert import device_config_to_pb
from .errors import InvalidArgument
from .hub import Command, CommandState, Hub, Outcome
from .twin_store import DeviceConfigView, config_view

if TYPE_CHECKING:
    from .store import DeviceRecord

logger = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 64 << 10


def describe_status(view: DeviceConfigView) -> str:
    """What the device's last ConfigStatus says, for events: applied (and how), or refused (and why)."""
    if view.refused_version and view.refused_version >= view.applied_version:
        return f"refused desired config v{view.refused_version}: {'; '.join(view.errors)}"
    return f"runs desired config v{view.applied_version} ({view.how or 'its own file and flags'})"


def apply_command(view: DeviceConfigView) -> Command:
    return Command("apply_config", {"version": view.desired_version, "document": view.desired_document})


def check_request(document: str, clear: bool) -> str:
    """The document to store (empty for clear); InvalidArgument with every reason the controller can see."""
    if clear:
        if document.strip():
            raise InvalidArgument("clear=true removes the document; it takes none")
        return ""
    if not document.strip():
        raise InvalidArgument("document is empty: give agent config keys (YAML), or clear=true")
    if len(document.encode()) > MAX_DOCUMENT_BYTES:
        raise InvalidArgument(f"document is {len(document.encode())} bytes; at most {MAX_DOCUMENT_BYTES}")
    errors = check_document(document)
    if errors:
        raise InvalidArgument("; ".join(errors))
    return document


class Twin:
    """SetDesiredConfig's delivery and answers: shared by FleetControl (sets, waits) and
    AgentGateway (hellos and ConfigStatus messages), so an answer reaches the call that waits for it."""

    def __init__(self, db, hub: Hub):
        self.db = db
        self.hub = hub
        self._waiting: dict[tuple[str, int], list[asyncio.Future[DeviceConfigView]]] = {}

    async def set_request(self, request: fleet_pb2.SetDesiredConfigRequest) -> fleet_pb2.SetDesiredConfigResponse:
        """SetDesiredConfig: checked, stored per device, sent; with timeout_ms, each device's answer."""
        document = check_request(request.document, request.clear)
        devices = await targets(self.db, request.device_id, request.select)
        timeout_s = timeout_of(request.timeout_ms) if request.timeout_ms else 0.0
        views, outcomes = await self.set(devices, document, request.select or "device", timeout_s)
        return fleet_pb2.SetDesiredConfigResponse(configs=[device_config_to_pb(v) for v in views],
                                                  outcomes=[outcome_to_pb(o) for o in outcomes])

    async def set(self, devices: list[DeviceRecord], document: str, set_from: str,
                  timeout_s: float) -> tuple[list[DeviceConfigView], list[Outcome]]:
        """Store the next version for each device and send it; with `timeout_s` > 0, wait for the answers."""
        records = await self.db.set_desired_configs([d.device_id for d in devices], document, set_from)
        views = [config_view(record) for record in records]
        what = "cleared" if not document else "set"
        for record, view in zip(records, views):
            message = f"desired config v{view.desired_version} {what} for {record.device_id} ({set_from})"
            await self.db.add_event("config", message, record.device_id)
            self.hub.device_changed(record, message)
        if timeout_s <= 0:
            for view in views:
                self.hub.send(view.device_id, apply_command(view))
            return views, []
        outcomes = await asyncio.gather(*(self._send_and_wait(view, timeout_s) for view in views))
        return views, list(outcomes)

    async def _send_and_wait(self, view: DeviceConfigView, timeout_s: float) -> Outcome:
        command = apply_command(view)
        key = (view.device_id, view.desired_version)
        answer: asyncio.Future[DeviceConfigView] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(answer)
        sent = time.perf_counter()
        try:
            if not self.hub.send(view.device_id, command):
                return Outcome(view.device_id, command.command_id, CommandState.NOT_CONNECTED,
                               "offline: it gets the document when it connects")
            try:
                got = await asyncio.wait_for(answer, timeout_s)
            except TimeoutError:
                return Outcome(view.device_id, command.command_id, CommandState.TIMED_OUT,
                               f"no ConfigStatus within {timeout_s:g} s")
        finally:
            waiters = self._waiting.get(key, [])
            if answer in waiters:
                waiters.remove(answer)
            if not waiters:
                self._waiting.pop(key, None)
        ms = (time.perf_counter() - sent) * 1000
        if got.applied_version == view.desired_version:
            return Outcome(view.device_id, command.command_id, CommandState.DONE, "", got.how, ms)
        return Outcome(view.device_id, command.command_id, CommandState.REFUSED, "; ".join(got.errors), "", ms)

    async def on_status(self, device_id: str, status: dict) -> DeviceRecord:
        """A ConfigStatus from the device (hello or after an ApplyConfig): stored, and the calls waiting for it told."""
        record = await self.db.record_config_status(device_id, status)
        view = config_view(record)
        for version in {view.applied_version, view.refused_version} - {0}:
            for waiter in self._waiting.get((device_id, version), []):
                if not waiter.done():
                    waiter.set_result(view)
        return record

    def pending(self, device: DeviceRecord) -> Command | None:
        """The ApplyConfig a device that just said hello still needs (None: it runs or refused the desired version)."""
        view = config_view(device)
        return apply_command(view) if view.pending else None
