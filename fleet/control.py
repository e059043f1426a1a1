"""FleetControl: the service operators, the TUI and integrations call."""
from __future__ import annotations

import asyncio
import logging

from edgefleet.v1 import fleet_pb2, fleet_pb2_grpc

from .convert import device_status, device_to_pb, frame_to_pb
from .errors import InvalidArgument
from .hub import Hub
from .store import FrameRecord

logger = logging.getLogger(__name__)

MAX_LIST_LIMIT = 10_000


class FleetControlServicer(fleet_pb2_grpc.FleetControlServicer):
    def __init__(self, db, hub: Hub, heartbeat_interval_s: int):
        self.db = db
        self.hub = hub
        self.heartbeat_interval_s = heartbeat_interval_s

    def _device_pb(self, record) -> fleet_pb2.Device:
        return device_to_pb(record, self.heartbeat_interval_s, self.hub.connected(record.device_id))

    async def ListDevices(self, request, context) -> fleet_pb2.ListDevicesResponse:
        records = await self.db.list_devices()
        devices = []
        for record in records:
            if request.status and device_status(record.last_seen, self.heartbeat_interval_s) != request.status:
                continue
            if any(record.labels.get(k) != v for k, v in request.selector.items()):
                continue
            devices.append(self._device_pb(record))
        return fleet_pb2.ListDevicesResponse(devices=devices)

    async def GetDevice(self, request, context) -> fleet_pb2.Device:
        if not request.device_id:
            raise InvalidArgument("device_id is empty")
        return self._device_pb(await self.db.get_device(request.device_id))

    async def ListDetections(self, request, context) -> fleet_pb2.ListDetectionsResponse:
        if not request.device_id:
            raise InvalidArgument("device_id is empty")
        limit = request.limit or 100
        if limit > MAX_LIST_LIMIT:
            raise InvalidArgument(f"limit must be <= {MAX_LIST_LIMIT}, got {limit}")
        frames, total = await self.db.list_detections(
            request.device_id, request.stream_id, request.after_sequence, limit
        )
        return fleet_pb2.ListDetectionsResponse(frames=[frame_to_pb(f) for f in frames], total=total)

    async def WatchDetections(self, request, context):
        if request.min_score < 0 or request.min_score > 1:
            raise InvalidArgument(f"min_score must be within 0..1, got {request.min_score}")
        labels = set(request.labels)

        def accepts(frame: FrameRecord) -> FrameRecord | None:
            if request.device_id and frame.device_id != request.device_id:
                return None
            if request.stream_id and frame.stream_id != request.stream_id:
                return None
            if not labels and not request.min_score:
                return frame
            objects = [o for o in frame.objects
                       if (not labels or o.label in labels) and o.score >= request.min_score]
            if not objects:
                return None
            return FrameRecord(frame.stream_id, frame.sequence, frame.frame_index, frame.capture_time,
                               objects, frame.device_id)

        watcher = self.hub.watch(accepts)
        try:
            while True:
                frame = await watcher.queue.get()
                yield fleet_pb2.WatchDetectionsResponse(frame=frame_to_pb(frame), dropped=watcher.dropped)
        except asyncio.CancelledError:
            raise
        finally:
            self.hub.unwatch(watcher)
