"""ListObjects, CountObjects, GetSnapshot and GetFrame requests, read and answered.

The store answers the questions of `fleet.object_queries`; this module turns a request into one
(checking every field once, with messages that name the field and the value), pages ListObjects with
an opaque token that encodes where the previous page ended (`ObjectCursor`), and groups count rows by
a device label's value, which the store does not know about (it groups by device; the devices' labels
are read here).

GetFrame asks the device itself: the CaptureFrame command goes down its Session (on this controller
replica or, forwarded, on the one that holds it) and the answer's snapshot comes back.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass

from edgefleet.common.convert import object_to_pb, snapshot_to_pb
from edgefleet.common.records import SnapshotRecord
from edgefleet.v1 import fleet_pb2, types_pb2

from .convert import time_field
from .errors import FailedPrecondition, InvalidArgument, Unavailable
from .hub import Command, CommandState, Hub
from .object_queries import BUCKETS, CountBucketRow, CountQuery, ObjectCursor, ObjectQuery
from .selectors import parse_selector

DEFAULT_OBJECT_LIMIT = 100
MAX_OBJECT_LIMIT = 1000
TOKEN_PREFIX = "o1."
KINDS = ("", "zone", "line")
DIRECTIONS = ("", "enter", "in", "out")
SNAPSHOT_KINDS = ("crop", "frame")
DEFAULT_FRAME_WIDTH = 640
MAX_FRAME_WIDTH = 3840
DEFAULT_FRAME_TIMEOUT_MS = 5000
MAX_FRAME_TIMEOUT_MS = 60_000


class FrameTimedOut(Exception):
    """The device did not answer CaptureFrame in time (the servicer answers DEADLINE_EXCEEDED)."""


# ---- paging ----

def page_token(cursor: ObjectCursor) -> str:
    """An opaque token for the page after `cursor`: its fields as JSON, base64url, with a version prefix."""
    raw = json.dumps([cursor.last_seen, cursor.device_id, cursor.object_id], separators=(",", ":"))
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw.encode()).decode("ascii").rstrip("=")


def cursor_of(token: str) -> ObjectCursor | None:
    """`page_token` undone (empty: the first page); InvalidArgument for anything it did not make."""
    if not token:
        return None
    bad = InvalidArgument(f"page_token {token[:40]!r} is not a token ListObjects gave (pass next_page_token "
                          "as it came, with the same filters)")
    if not token.startswith(TOKEN_PREFIX):
        raise bad
    body = token[len(TOKEN_PREFIX):]
    try:
        last_seen, device_id, object_id = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (ValueError, TypeError, binascii.Error):
        raise bad from None
    if not isinstance(last_seen, int | float) or not isinstance(device_id, str) or not isinstance(object_id, str):
        raise bad
    return ObjectCursor(float(last_seen), device_id, object_id)


# ---- which devices ----

async def device_ids(db, device_id: str, select: str) -> tuple[str, ...] | None:
    """The devices a request names: one (NotFound when unknown), a selector's (maybe none), or None: all."""
    if device_id and select:
        raise InvalidArgument("set device_id or select, not both")
    if device_id:
        return ((await db.get_device(device_id)).device_id,)
    if select:
        return tuple(d.device_id for d in await db.devices_matching(parse_selector(select)))
    return None


def _time_range(request) -> tuple[float | None, float | None]:
    since, until = time_field(request, "since"), time_field(request, "until")
    if since is not None and until is not None and until <= since:
        raise InvalidArgument(f"until ({request.until.ToJsonString()}) must be after since "
                              f"({request.since.ToJsonString()})")
    return since, until


# ---- ListObjects ----

async def list_objects(db, request: fleet_pb2.ListObjectsRequest) -> fleet_pb2.ListObjectsResponse:
    limit = request.limit or DEFAULT_OBJECT_LIMIT
    if limit > MAX_OBJECT_LIMIT:
        raise InvalidArgument(f"limit must be <= {MAX_OBJECT_LIMIT}, got {limit}")
    after = cursor_of(request.page_token)
    since, until = _time_range(request)
    ids = await device_ids(db, request.device_id, request.select)
    if ids == ():
        return fleet_pb2.ListObjectsResponse()
    query = ObjectQuery(ids, request.stream_id, request.label, request.zone, request.line, since, until,
                        request.active, limit + 1, after)
    objects = await db.list_objects(query)
    more = len(objects) > limit
    objects = objects[:limit]
    token = ""
    if more:
        last = objects[-1]
        token = page_token(ObjectCursor(last.last_seen, last.device_id, last.object_id))
    return fleet_pb2.ListObjectsResponse(objects=[object_to_pb(o) for o in objects], next_page_token=token)


# ---- CountObjects ----

@dataclass(frozen=True)
class Grouping:
    """A CountObjects request's group_by, read: by device, by stream, by one device label's value."""

    device: bool = False
    stream: bool = False
    label_key: str = ""


def grouping(group_by: list[str]) -> Grouping:
    device = stream = False
    label_key = ""
    for item in group_by:
        if item == "device" and not device:
            device = True
        elif item == "stream" and not stream:
            stream = True
        elif item.startswith("label:") and item[len("label:"):].strip() and not label_key:
            label_key = item[len("label:"):].strip()
        else:
            raise InvalidArgument(f"group_by {item!r} is not one of device, stream, label:KEY "
                                  "(each at most once, one label key)")
    return Grouping(device, stream, label_key)


def count_query(request: fleet_pb2.CountObjectsRequest, group: Grouping) -> CountQuery:
    """The store's question, every device's (the caller narrows `device_ids`)."""
    if request.bucket not in BUCKETS:
        raise InvalidArgument(f"bucket must be one of minute, hour, day (or empty), got {request.bucket!r}")
    if request.kind not in KINDS:
        raise InvalidArgument(f"kind must be zone or line (or empty), got {request.kind!r}")
    if request.direction not in DIRECTIONS:
        raise InvalidArgument(f"direction must be enter, in or out (or empty), got {request.direction!r}")
    since, until = _time_range(request)
    return CountQuery(None, request.stream_id, request.kind, request.name, request.label, request.direction,
                      since, until, request.bucket, by_device=group.device or bool(group.label_key),
                      by_stream=group.stream)


async def count_objects(db, request: fleet_pb2.CountObjectsRequest) -> fleet_pb2.CountObjectsResponse:
    group = grouping(list(request.group_by))
    query = count_query(request, group)
    ids = await device_ids(db, request.device_id, request.select)
    if ids == ():
        return fleet_pb2.CountObjectsResponse()
    rows = await db.count_objects(dataclasses.replace(query, device_ids=ids))
    labels: dict[str, str] = {}
    if group.label_key:
        labels = {d.device_id: d.labels.get(group.label_key, "") for d in await db.list_devices()}
    buckets = regroup(rows, group, labels)
    return fleet_pb2.CountObjectsResponse(buckets=[bucket_to_pb(key, n) for key, n in buckets],
                                          total=sum(n for _, n in buckets))


BucketKey = tuple[float, str, str, str, str, str, str, str]
"""start (-1: not bucketed), device, stream, group, kind, name, label, direction: the order answers come in."""


def regroup(rows: list[CountBucketRow], group: Grouping, labels: dict[str, str]) -> list[tuple[BucketKey, int]]:
    """The store's rows summed by the request's grouping: device rows folded into their label value's
    (`labels`: device id -> value, "" for devices without the key) and the device dropped unless asked for."""
    sums: dict[BucketKey, int] = defaultdict(int)
    for row in rows:
        key = (-1.0 if row.start is None else row.start, row.device_id if group.device else "",
               row.stream_id if group.stream else "", labels.get(row.device_id, "") if group.label_key else "",
               row.kind, row.name, row.label, row.direction)
        sums[key] += row.count
    return sorted(sums.items())


def bucket_to_pb(key: BucketKey, count: int) -> fleet_pb2.CountBucket:
    start, device_id, stream_id, group, kind, name, label, direction = key
    bucket = fleet_pb2.CountBucket(device_id=device_id, stream_id=stream_id, group=group, kind=kind, name=name,
                                   label=label, direction=direction, count=count)
    if start >= 0:
        bucket.start.FromSeconds(int(start))
    return bucket


# ---- pictures ----

def snapshot_pb(record: SnapshotRecord) -> types_pb2.Snapshot:
    return snapshot_to_pb(record, hashlib.sha256(record.jpeg).hexdigest())


async def get_snapshot(db, request: fleet_pb2.GetSnapshotRequest) -> types_pb2.Snapshot:
    if not request.object_id:
        raise InvalidArgument("object_id is empty")
    kind = request.kind or "crop"
    if kind not in SNAPSHOT_KINDS:
        raise InvalidArgument(f"kind must be crop or frame (or empty: crop), got {request.kind!r}")
    return snapshot_pb(await db.get_snapshot(request.object_id, kind, request.device_id))


def capture_command(request: fleet_pb2.GetFrameRequest) -> tuple[Command, float]:
    """The CaptureFrame command a GetFrame asks for, and how long to wait for its answer (seconds)."""
    if not request.device_id:
        raise InvalidArgument("device_id is empty")
    if request.max_width > MAX_FRAME_WIDTH:
        raise InvalidArgument(f"max_width must be <= {MAX_FRAME_WIDTH}, got {request.max_width}")
    if request.timeout_ms > MAX_FRAME_TIMEOUT_MS:
        raise InvalidArgument(f"timeout_ms must be <= {MAX_FRAME_TIMEOUT_MS}, got {request.timeout_ms}")
    width = request.max_width or DEFAULT_FRAME_WIDTH
    command = Command("capture_frame", {"stream_id": request.stream_id, "max_width": width})
    return command, (request.timeout_ms or DEFAULT_FRAME_TIMEOUT_MS) / 1000


async def get_frame(db, hub: Hub, request: fleet_pb2.GetFrameRequest) -> types_pb2.Snapshot:
    """The stream's latest annotated frame, from the device (Unavailable when it has no open Session,
    FrameTimedOut when it does not answer in time, FailedPrecondition with its reason when it refuses)."""
    command, timeout_s = capture_command(request)
    device = await db.get_device(request.device_id)
    outcome = await hub.send_and_wait(device.device_id, command, timeout_s)
    what = f"device {device.device_id}" + (f" stream {request.stream_id}" if request.stream_id else "")
    if outcome.state is CommandState.NOT_CONNECTED:
        raise Unavailable(f"device {device.device_id} is not connected: no frame to capture")
    if outcome.state is CommandState.TIMED_OUT:
        raise FrameTimedOut(f"{what} did not answer CaptureFrame: {outcome.error}")
    if outcome.state is CommandState.REFUSED:
        raise FailedPrecondition(f"{what} could not capture a frame: {outcome.error}")
    if outcome.snapshot is None:
        raise FailedPrecondition(f"{what} answered CaptureFrame without a picture (an agent too old for it?)")
    return snapshot_pb(outcome.snapshot)
