"""AgentGateway: the service devices call."""
from __future__ import annotations

import asyncio
import logging

from edgefleet.v1 import agent_pb2, agent_pb2_grpc

from .convert import frame_from_pb, to_dict
from .errors import InvalidArgument
from .hub import Hub
from .interceptors import current_device

logger = logging.getLogger(__name__)


class AgentGatewayServicer(agent_pb2_grpc.AgentGatewayServicer):
    def __init__(self, db, hub: Hub, heartbeat_interval_s: int):
        self.db = db
        self.hub = hub
        self.heartbeat_interval_s = heartbeat_interval_s

    async def Enroll(self, request: agent_pb2.EnrollRequest, context) -> agent_pb2.EnrollResponse:
        if not request.enroll_key:
            raise InvalidArgument("enroll_key is empty")
        device, token = await self.db.enroll(
            request.enroll_key, request.hardware_id, request.hostname or "device",
            request.agent_version, to_dict(request.profile), dict(request.labels),
        )
        return agent_pb2.EnrollResponse(
            device_id=device.device_id, device_token=token, heartbeat_interval_s=self.heartbeat_interval_s
        )

    async def Session(self, request_iterator, context):
        device_id = current_device.get()
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        if first.WhichOneof("body") != "hello":
            raise InvalidArgument(f"the first Session message must be hello, got {first.WhichOneof('body')}")
        hello = first.hello
        await self.db.record_hello(
            device_id, hello.agent_version, to_dict(hello.profile), to_dict(hello.plan), list(hello.streams)
        )
        device = await self.db.get_device(device_id)
        self.hub.session_opened(device_id)
        logger.info("session opened: %s (%s)", device_id, hello.agent_version)
        try:
            yield agent_pb2.ControllerMessage(
                accepted=agent_pb2.SessionAccepted(
                    device_id=device_id, heartbeat_interval_s=self.heartbeat_interval_s,
                    acked_sequence=device.acked_sequence,
                )
            )
            reader = asyncio.create_task(self._read_session(device_id, request_iterator))
            # Commands for the device will be queued here; until then just follow the reader.
            await reader
        finally:
            self.hub.session_closed(device_id)
            logger.info("session closed: %s", device_id)

    async def _read_session(self, device_id: str, request_iterator) -> None:
        async for message in request_iterator:
            kind = message.WhichOneof("body")
            if kind == "heartbeat":
                hb = message.heartbeat
                plan = to_dict(hb.plan) if hb.HasField("plan") else None
                await self.db.record_heartbeat(device_id, to_dict(hb.health), plan)
            else:
                logger.debug("session %s: ignoring %s", device_id, kind)

    async def PublishDetections(self, request_iterator, context):
        device_id = current_device.get()
        async for batch in request_iterator:
            frames = [frame_from_pb(f) for f in batch.frames]
            for frame in frames:
                frame.device_id = device_id
            result = await self.db.store_frames(device_id, frames)
            self.hub.publish(frames)
            yield agent_pb2.PublishAck(acked_sequence=result.acked_sequence, duplicates=result.duplicates)
