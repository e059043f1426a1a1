"""Protobuf <-> domain conversions. Protobuf types stop here: the store never sees them."""
from __future__ import annotations

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from edgefleet.v1 import agent_pb2, fleet_pb2, types_pb2

from .hub import Command, FleetChange
from .presence import Presence, Status
from .store import DeviceRecord, FrameRecord, ObjectRecord


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


def device_to_pb(rec: DeviceRecord, status: Status, connected: bool) -> fleet_pb2.Device:
    device = fleet_pb2.Device(
        device_id=rec.device_id, hostname=rec.hostname, status=status_to_pb(status),
        enrolled=timestamp(rec.enrolled), agent_version=rec.agent_version,
        profile=from_dict(rec.profile, types_pb2.HardwareProfile()),
        plan=from_dict(rec.plan, types_pb2.RuntimePlan()),
        health=from_dict(rec.health, types_pb2.HealthSample()),
        acked_sequence=rec.acked_sequence, detections_stored=rec.detections_stored,
        streams=rec.streams, labels=rec.labels, connected=connected,
    )
    if rec.last_seen is not None:
        device.last_seen.CopyFrom(timestamp(rec.last_seen))
    if rec.plan_override:
        device.plan_override.CopyFrom(from_dict(rec.plan_override, types_pb2.SetPlan()))
    return device


def status_to_pb(status: Status) -> int:
    return fleet_pb2.DeviceStatus.Value(status.name)


def fleet_change_to_pb(change: FleetChange, presence: Presence) -> list[fleet_pb2.FleetEvent]:
    """The device as it was at the change, then the change in words when it has some."""
    when = timestamp(change.time)
    status = presence.status(change.device.last_seen, now=change.time)
    events = [fleet_pb2.FleetEvent(time=when, device=device_to_pb(change.device, status, change.connected))]
    if change.message:
        events.append(fleet_pb2.FleetEvent(time=when, message=change.message))
    return events


def command_to_pb(command: Command) -> agent_pb2.ControllerMessage:
    """Strict on purpose: an action or payload field that `Command` lacks is a bug, not input."""
    return agent_pb2.ControllerMessage(command=json_format.ParseDict(
        {"command_id": command.command_id, command.action: command.payload}, agent_pb2.Command()
    ))
