"""AgentGateway: the service devices call."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from edgefleet.v1 import agent_pb2, agent_pb2_grpc

from .convert import command_to_pb, frame_from_pb, to_dict
from .errors import InvalidArgument, PermissionDenied
from .hub import Command, Hub
from .interceptors import current_device
from .metrics import ControllerMetrics

logger = logging.getLogger(__name__)


class AgentGatewayServicer(agent_pb2_grpc.AgentGatewayServicer):
    def __init__(self, db, hub: Hub, heartbeat_interval_s: int, metrics: ControllerMetrics | None = None):
        self.db = db
        self.hub = hub
        self.heartbeat_interval_s = heartbeat_interval_s
        self.metrics = metrics or ControllerMetrics()  # counted either way; served only when configured

    async def Enroll(self, request: agent_pb2.EnrollRequest, context) -> agent_pb2.EnrollResponse:
        if not request.enroll_key:
            raise InvalidArgument("enroll_key is empty")
        device, token = await self.db.enroll(
            request.enroll_key, request.hardware_id, request.hostname or "device",
            request.agent_version, to_dict(request.profile), dict(request.labels),
        )
        self.hub.device_changed(device, f"{device.hostname} enrolled as {device.device_id}")
        return agent_pb2.EnrollResponse(
            device_id=device.device_id, device_token=token, heartbeat_interval_s=self.heartbeat_interval_s
        )

    async def Session(self, request_iterator, context):
        """Hello first; then heartbeats up and commands down until the device closes its side.

        A stored plan override goes down right after `accepted`, so a device that was away
        when the operator set it gets it on reconnect.
        """
        device_id = current_device.get()
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        if first.WhichOneof("body") != "hello":
            raise InvalidArgument(f"the first Session message must be hello, got {first.WhichOneof('body')}")
        hello = first.hello
        device = await self.db.record_hello(
            device_id, hello.agent_version, to_dict(hello.profile), to_dict(hello.plan), list(hello.streams)
        )
        commands = self.hub.open_session(device_id)
        self.hub.device_changed(device, f"{device.hostname} ({device_id}) connected")
        logger.info("session opened: %s (%s)", device_id, hello.agent_version)

        async def read_heartbeats() -> None:
            nonlocal device  # the disconnect event reports the last state the device sent
            async for up in request_iterator:
                kind = up.WhichOneof("body")
                if kind != "heartbeat":
                    logger.debug("session %s: ignoring %s", device_id, kind)
                    continue
                hb = up.heartbeat
                plan = to_dict(hb.plan) if hb.HasField("plan") else None
                device = await self.db.record_heartbeat(device_id, to_dict(hb.health), plan)
                note = f"{device.hostname} ({device_id}) changed its plan" if plan else ""
                self.hub.device_changed(device, note)

        reader = asyncio.create_task(read_heartbeats(), name=f"session-{device_id}")
        try:
            yield agent_pb2.ControllerMessage(
                accepted=agent_pb2.SessionAccepted(
                    device_id=device_id, heartbeat_interval_s=self.heartbeat_interval_s,
                    acked_sequence=device.acked_sequence,
                )
            )
            if device.plan_override:
                yield command_to_pb(Command("set_plan", device.plan_override))
            async for command in _until_done(commands, reader):
                yield command_to_pb(command)
        finally:
            reader.cancel()
            self.hub.close_session(device_id, commands)
            self.hub.device_changed(device, f"{device.hostname} ({device_id}) disconnected")
            logger.info("session closed: %s", device_id)

    async def PublishDetections(self, request_iterator, context):
        device_id = current_device.get()
        async for batch in request_iterator:
            arrived = time.perf_counter()
            frames = [frame_from_pb(f) for f in batch.frames]
            for frame in frames:
                if frame.device_id and frame.device_id != device_id:
                    raise PermissionDenied(f"device {device_id!r} cannot publish as {frame.device_id!r}")
                frame.device_id = device_id
            result = await self.db.store_frames(device_id, frames)
            self.hub.detections.publish(frames)
            self.metrics.frames_ingested.inc(len(frames))
            self.metrics.detections_ingested.inc(sum(len(f.objects) for f in frames))
            self.metrics.duplicate_frames.inc(result.duplicates)
            self.metrics.ack_latency.observe(time.perf_counter() - arrived)
            yield agent_pb2.PublishAck(acked_sequence=result.acked_sequence, duplicates=result.duplicates)


async def _until_done(commands: asyncio.Queue, reader: asyncio.Task) -> AsyncIterator[Command]:
    """Commands from the queue until `reader` ends; then its error, if it had one, is raised."""
    while True:
        getter = asyncio.ensure_future(commands.get())
        try:
            await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            yield getter.result()
            continue
        reader.result()
        return
