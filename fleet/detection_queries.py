"""ListDetections and WatchDetections requests, read: which devices, what time range, which labels.

A request names one device (`device_id`), the devices a selector matches (`select`), or, with
neither, every device. `since`/`until` bound the capture time; `labels` keeps frames with an object
of those class labels (and of each frame only those objects, as WatchDetections always did).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from edgefleet.v1 import fleet_pb2

from .convert import fit_answer, frame_to_pb, time_field
from .errors import InvalidArgument
from .selectors import Selector, parse_selector

MAX_LIST_LIMIT = 10_000
DEVICE_SET_REFRESH_S = 5.0
"""A selector watch re-reads which devices match this often: labels change, devices enroll."""


def request_selector(request: fleet_pb2.ListDetectionsRequest | fleet_pb2.WatchDetectionsRequest) -> Selector | None:
    """The request's selector; None when it names a device or asks for every device."""
    if request.device_id and request.select:
        raise InvalidArgument("set device_id or select, not both")
    return parse_selector(request.select) if request.select else None


async def list_detections(db, request: fleet_pb2.ListDetectionsRequest) -> fleet_pb2.ListDetectionsResponse:
    limit = request.limit or 100
    if limit > MAX_LIST_LIMIT:
        raise InvalidArgument(f"limit must be <= {MAX_LIST_LIMIT}, got {limit}")
    since, until = time_field(request, "since"), time_field(request, "until")
    if since is not None and until is not None and until <= since:
        raise InvalidArgument(f"until ({request.until.ToJsonString()}) must be after since "
                              f"({request.since.ToJsonString()})")
    selector = request_selector(request)
    filters = {"since": since, "until": until, "labels": list(request.labels)}
    if request.device_id:
        frames, total = await db.list_detections(request.device_id, request.stream_id, request.after_sequence,
                                                 limit, **filters)
    else:
        if request.after_sequence:
            raise InvalidArgument("after_sequence counts one device's records: set device_id with it")
        devices = await db.devices_matching(selector or Selector())
        frames, total = await db.list_detections_of([d.device_id for d in devices], request.stream_id, limit,
                                                    **filters)
    answer, omitted = fit_answer([frame_to_pb(f) for f in frames], keep_newest=not request.after_sequence)
    return fleet_pb2.ListDetectionsResponse(frames=answer, total=total, omitted=omitted)


@dataclass
class DeviceSet:
    """The devices a watch's selector matches, re-read every DEVICE_SET_REFRESH_S; `None` selector: any."""

    db: object
    selector: Selector | None
    ids: frozenset[str] = frozenset()
    read_at: float = 0.0

    async def refresh(self, clock: Callable[[], float] = time.monotonic) -> None:
        if self.selector is None or clock() - self.read_at < DEVICE_SET_REFRESH_S:
            return
        devices = await self.db.devices_matching(self.selector)  # type: ignore[attr-defined]
        self.ids, self.read_at = frozenset(d.device_id for d in devices), clock()

    def admits(self, device_id: str) -> bool:
        return self.selector is None or device_id in self.ids
