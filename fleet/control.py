"""FleetControl: the service operators, the TUI and integrations call."""
from __future__ import annotations

import logging
import time

from edgefleet.v1 import fleet_pb2, fleet_pb2_grpc, types_pb2

from .convert import device_to_pb, fleet_change_to_pb, frame_to_pb, timestamp, to_dict
from .errors import InvalidArgument
from .hub import Command, Hub
from .presence import Presence
from .store import DeviceRecord, FrameRecord

logger = logging.getLogger(__name__)

MAX_LIST_LIMIT = 10_000
WATCH_QUEUE_SIZE = 256


class FleetControlServicer(fleet_pb2_grpc.FleetControlServicer):
    def __init__(self, db, hub: Hub, presence: Presence):
        self.db = db
        self.hub = hub
        self.presence = presence

    def _device_pb(self, record: DeviceRecord) -> fleet_pb2.Device:
        status = self.presence.status(record.last_seen)
        return device_to_pb(record, status, self.hub.connected(record.device_id))

    # ---- devices ----

    async def ListDevices(self, request, context) -> fleet_pb2.ListDevicesResponse:
        devices = []
        for record in await self.db.list_devices():
            device = self._device_pb(record)
            if request.status and device.status != request.status:
                continue
            if any(record.labels.get(k) != v for k, v in request.selector.items()):
                continue
            devices.append(device)
        return fleet_pb2.ListDevicesResponse(devices=devices)

    async def GetDevice(self, request, context) -> fleet_pb2.Device:
        if not request.device_id:
            raise InvalidArgument("device_id is empty")
        return self._device_pb(await self.db.get_device(request.device_id))

    async def WatchFleet(self, request, context):
        """Every device once, then each change as it happens.

        The watcher is registered before the snapshot is read, so a change that lands in
        between is sent (after the snapshot) rather than lost.
        """
        watcher = self.hub.fleet.watch(maxsize=WATCH_QUEUE_SIZE)
        try:
            now = timestamp(time.time())
            for record in await self.db.list_devices():
                yield fleet_pb2.FleetEvent(time=now, device=self._device_pb(record))
            while True:
                change = await watcher.queue.get()
                for event in fleet_change_to_pb(change, self.presence):
                    event.dropped = watcher.dropped
                    yield event
        finally:
            self.hub.fleet.unwatch(watcher)

    async def SetPlanOverride(self, request, context) -> fleet_pb2.Device:
        """Store the override and send it down every open Session of the device.

        A device that is not connected gets it when its next Session opens.
        """
        if not request.device_id:
            raise InvalidArgument("device_id is empty")
        override = _plan_override(request)
        device = await self.db.set_plan_override(request.device_id, override)
        sessions = self.hub.send(device.device_id, Command("set_plan", override or {"clear": True}))
        what = "cleared" if not override else f"set ({sessions} open session(s) notified)"
        logger.info("plan override for %s %s", device.device_id, what)
        self.hub.device_changed(device, f"plan override for {device.hostname} ({device.device_id}) {what}")
        return self._device_pb(device)

    # ---- detections ----

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

        watcher = self.hub.detections.watch(accepts, maxsize=WATCH_QUEUE_SIZE)
        try:
            while True:
                frame = await watcher.queue.get()
                yield fleet_pb2.WatchDetectionsResponse(frame=frame_to_pb(frame), dropped=watcher.dropped)
        finally:
            self.hub.detections.unwatch(watcher)


def _plan_override(request: fleet_pb2.SetPlanOverrideRequest) -> dict:
    """The override to store, as a dict; empty when the request clears it."""
    plan: types_pb2.SetPlan = request.plan
    if not request.HasField("plan") or plan == types_pb2.SetPlan():
        raise InvalidArgument("plan is empty: set a bound, a pinned plan, or clear=true")
    if plan.clear:
        if plan != types_pb2.SetPlan(clear=True):
            raise InvalidArgument("plan.clear=true removes the override; it takes no other fields")
        return {}
    for name in ("max_input_size", "min_detect_interval", "max_detect_interval"):
        if getattr(plan, name) < 0:
            raise InvalidArgument(f"plan.{name} must be >= 0, got {getattr(plan, name)}")
    if 0 < plan.max_detect_interval < plan.min_detect_interval:
        raise InvalidArgument(
            f"plan.min_detect_interval ({plan.min_detect_interval}) > plan.max_detect_interval "
            f"({plan.max_detect_interval})"
        )
    return to_dict(plan)
