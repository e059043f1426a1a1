"""`FrameRecord` <-> `types_pb2.FrameDetections`, for the agent (which sends) and the controller (which
receives, stores and serves). Protobuf types stop here and in each side's own convert module."""
from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from edgefleet.v1 import types_pb2

from .records import FrameRecord, ObjectRecord

MIN_SECONDS, MAX_SECONDS = -62_135_596_800, 253_402_300_799
"""The range a google.protobuf.Timestamp may hold (years 1 to 9999)."""


class InvalidFrame(ValueError):
    """A FrameDetections that no record can hold; the message names the field and the value."""


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


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


def frame_from_pb(pb: types_pb2.FrameDetections) -> FrameRecord:
    """On the controller's ingest hot path (every published frame): positional fields, each
    submessage read once. Raises InvalidFrame for a capture time outside Timestamp's range."""
    objects = []
    for d in pb.detections:
        box = d.box
        # ObjectRecord(track_id, class_id, label, score, xyxy, predicted)
        objects.append(ObjectRecord(d.track_id, d.class_id, d.label, d.score, (box.x1, box.y1, box.x2, box.y2),
                                    d.predicted))
    ct = pb.capture_time  # Timestamp.ToNanoseconds() / 1e9, without the method call
    if not (MIN_SECONDS <= ct.seconds <= MAX_SECONDS and 0 <= ct.nanos <= 999_999_999):
        raise InvalidFrame(f"frames[].capture_time is not a valid timestamp ({ct.seconds} s, {ct.nanos} ns)")
    # FrameRecord(stream_id, sequence, frame_index, capture_time, objects, device_id)
    return FrameRecord(pb.stream_id, pb.sequence, pb.frame_index, (ct.seconds * 1_000_000_000 + ct.nanos) / 1e9,
                       objects, pb.device_id)
