"""Desired configuration, the device twin: the operator's document for a device vs what it runs.

`SetDesiredConfig` stores a new version of a YAML document of agent config keys for one device or
every device a selector matches (each device counts its own versions: the next one is above every
version it stored or the device reported), and sends it down each open Session as ApplyConfig.
A device that is offline gets it when its next Session opens: the hello says which version the
device runs (ConfigStatus), and a desired version it has neither applied nor refused goes down
again; the documents live in the database, so a restarted controller does the same.

The device answers each ApplyConfig with a ConfigStatus (applied or refused, with the reasons),
stored as the device's `config_status`, and with the CommandResult every command gets, which a call
with `timeout_ms` waits for (`Hub.send_and_wait`).
`clear` stores an empty document as the next version: the device goes back to its own agent.yaml
and flags (an empty document means exactly that on the device).

The controller checks what it can without the device's own config (agent.desired.check_document:
YAML, keys, device-only keys, each value's type and bounds); settings that conflict with the
device's file or flags are the device's to refuse.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from edgefleet.agent.desired import check_document
from edgefleet.v1 import fleet_pb2

from .commands import outcome_to_pb, targets, timeout_of
from .convert import device_config_to_pb
from .errors import InvalidArgument
from .hub import Command, Hub, Outcome
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
    """SetDesiredConfig's delivery (FleetControl) and the devices' ConfigStatus (AgentGateway)."""

    def __init__(self, db, hub: Hub):
        self.db = db
        self.hub = hub

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
        outcomes = await asyncio.gather(*(self.hub.send_and_wait(view.device_id, apply_command(view), timeout_s)
                                          for view in views))
        return views, list(outcomes)

    async def on_status(self, device_id: str, status: dict) -> DeviceRecord:
        """A ConfigStatus from the device (hello or after an ApplyConfig), stored."""
        return await self.db.record_config_status(device_id, status)

    def pending(self, device: DeviceRecord) -> Command | None:
        """The ApplyConfig a device that just said hello still needs (None: it runs or refused the desired version)."""
        view = config_view(device)
        return apply_command(view) if view.pending else None
