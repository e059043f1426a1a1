"""Protobuf <-> domain conversions. Protobuf types stop here: the store never sees them."""
from __future__ import annotations

import time

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from edgefleet.v1 import fleet_pb2, types_pb2

from .store import DeviceRecord, FrameRecord, ObjectRecord

# A device is ONLINE while its last heartbeat is younger than this many intervals, STALE up to
# OFFLINE_AFTER intervals, OFFLINE after.
STALE_AFTER = 3
OFFLINE_AFTER = 10


def to_dict(message: Message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def from_dict(data: dict, message: Message) -> Message:
    return json_format.ParseDict(data or {}, message, ignore_unknown_fields=True)


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def frame_from_pb(pb: types_pb2.FrameDetections) -> FrameRecord:
    objects = [
        ObjectRecord(
            track_id=d.track_id, class_id=d.class_id, label=d.label, score=d.score,
            xyxy=(d.box.x1, d.box.y1, d.box.x2, d.box.y2), predicted=d.predicted,
        )
        for d in pb.detections
    ]
    return FrameRecord(
        stream_id=pb.stream_id, sequence=pb.sequence, frame_index=pb.frame_index,
        capture_time=pb.capture_time.ToNanoseconds() / 1e9, objects=objects, device_id=pb.device_id,
    )


def frame_to_pb(rec: FrameRecord) -> types_pb2.FrameDetections:
    return types_pb2.FrameDetections(
        device_id=rec.device_id, stream_id=rec.stream_id, sequence=rec.sequence,
        frame_index=rec.frame_index, capture_time=timestamp(rec.capture_time),
        detections=[
            types_pb2.Detection(
                track_id=o.track_id, class_id=o.class_id, label=o.label, score=o.score,
                box=types_pb2.Box(x1=o.xyxy[0], y1=o.xyxy[1], x2=o.xyxy[2], y2=o.xyxy[3]),
                predicted=o.predicted,
            )
            for o in rec.objects
        ],
    )


def device_status(last_seen: float | None, heartbeat_interval_s: float, now: float | None = None) -> int:
    if last_seen is None:
        return fleet_pb2.OFFLINE
    age = (now or time.time()) - last_seen
    if age <= STALE_AFTER * heartbeat_interval_s:
        return fleet_pb2.ONLINE
    if age <= OFFLINE_AFTER * heartbeat_interval_s:
        return fleet_pb2.STALE
    return fleet_pb2.OFFLINE


def device_to_pb(rec: DeviceRecord, heartbeat_interval_s: float, connected: bool) -> fleet_pb2.Device:
    device = fleet_pb2.Device(
        device_id=rec.device_id, hostname=rec.hostname,
        status=device_status(rec.last_seen, heartbeat_interval_s),
        enrolled=timestamp(rec.enrolled), agent_version=rec.agent_version,
        profile=from_dict(rec.profile, types_pb2.HardwareProfile()),
        plan=from_dict(rec.plan, types_pb2.RuntimePlan()),
        health=from_dict(rec.health, types_pb2.HealthSample()),
        acked_sequence=rec.acked_sequence, detections_stored=rec.detections_stored,
        streams=rec.streams, labels=rec.labels, connected=connected,
    )
    if rec.last_seen is not None:
        device.last_seen.CopyFrom(timestamp(rec.last_seen))
    return device
