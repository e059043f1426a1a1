"""The outbox's records <-> their messages, for the agent (which sends) and the controller (which
receives, stores and serves): `FrameRecord` <-> `FrameDetections`, `ObjectEventRecord` <-> `ObjectEvent`,
`CountRecord` <-> `CountBatch`, `SnapshotRecord` <-> `SnapshotRecord`, and `batch_to_pb` /
`batch_records` for a whole `DetectionBatch`. Protobuf types stop here and in each side's own
convert module."""
from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from edgefleet.v1 import agent_pb2, types_pb2

from .records import (
    CountRecord,
    CountRow,
    FrameRecord,
    ObjectEventRecord,
    ObjectRecord,
    Record,
    SnapshotRecord,
    TrackedObject,
)

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


def seconds(ts: Timestamp, field: str) -> float:
    """A Timestamp as unix seconds; InvalidFrame (naming `field`) outside Timestamp's range."""
    if not (MIN_SECONDS <= ts.seconds <= MAX_SECONDS and 0 <= ts.nanos <= 999_999_999):
        raise InvalidFrame(f"{field} is not a valid timestamp ({ts.seconds} s, {ts.nanos} ns)")
    return (ts.seconds * 1_000_000_000 + ts.nanos) / 1e9


def object_to_pb(obj: TrackedObject) -> types_pb2.TrackedObject:
    x1, y1, x2, y2 = obj.best_box
    return types_pb2.TrackedObject(
        object_id=obj.object_id, device_id=obj.device_id, stream_id=obj.stream_id, track_id=obj.track_id,
        label=obj.label, class_id=obj.class_id, first_seen=timestamp(obj.first_seen),
        last_seen=timestamp(obj.last_seen), best_score=obj.best_score,
        best_box=types_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2),
        path=[types_pb2.PathPoint(x=x, y=y, time=timestamp(t)) for x, y, t in obj.path],
        zones=obj.zones,
        crossings=[types_pb2.ObjectCrossing(line=line, direction=d, time=timestamp(t)) for line, d, t in obj.crossings],
        frames=obj.frames, ended=obj.ended, has_snapshot=obj.has_snapshot,
    )


def object_from_pb(pb: types_pb2.TrackedObject) -> TrackedObject:
    box = pb.best_box
    return TrackedObject(
        object_id=pb.object_id, stream_id=pb.stream_id, track_id=pb.track_id, label=pb.label, class_id=pb.class_id,
        first_seen=seconds(pb.first_seen, "object.first_seen"), last_seen=seconds(pb.last_seen, "object.last_seen"),
        best_score=pb.best_score, best_box=(box.x1, box.y1, box.x2, box.y2),
        path=[(p.x, p.y, seconds(p.time, "object.path[].time")) for p in pb.path], zones=list(pb.zones),
        crossings=[(c.line, c.direction, seconds(c.time, "object.crossings[].time")) for c in pb.crossings],
        frames=pb.frames, ended=pb.ended, has_snapshot=pb.has_snapshot, device_id=pb.device_id,
    )


def count_row_to_pb(row: CountRow) -> types_pb2.CountRow:
    return types_pb2.CountRow(stream_id=row.stream, minute=row.minute, kind=row.kind, name=row.name,
                              label=row.label, direction=row.direction, count=row.count)


def count_row_from_pb(pb: types_pb2.CountRow) -> CountRow:
    return CountRow(pb.stream_id, pb.minute, pb.kind, pb.name, pb.label, pb.direction, pb.count)


def snapshot_to_pb(rec: SnapshotRecord, sha256: str = "") -> types_pb2.Snapshot:
    return types_pb2.Snapshot(
        device_id=rec.device_id, stream_id=rec.stream_id, object_id=rec.object_id, kind=rec.kind, label=rec.label,
        time=timestamp(rec.capture_time), jpeg=rec.jpeg, sha256=sha256, score=rec.score)


def snapshot_from_pb(pb: types_pb2.Snapshot, sequence: int = 0) -> SnapshotRecord:
    return SnapshotRecord(pb.stream_id, pb.object_id, pb.kind, pb.label, seconds(pb.time, "snapshot.time"),
                          pb.jpeg, pb.score, sequence, pb.device_id)


def batch_to_pb(records: list[Record]) -> agent_pb2.DetectionBatch:
    """The records as one DetectionBatch, each kind in its own list (sequences kept)."""
    batch = agent_pb2.DetectionBatch()
    for rec in records:
        if isinstance(rec, FrameRecord):
            batch.frames.append(frame_to_pb(rec))
        elif isinstance(rec, ObjectEventRecord):
            batch.objects.append(agent_pb2.ObjectEvent(sequence=rec.sequence, type=rec.type,
                                                       object=object_to_pb(rec.object)))
        elif isinstance(rec, CountRecord):
            rows = [count_row_to_pb(r) for r in rec.rows]
            batch.counts.append(agent_pb2.CountBatch(sequence=rec.sequence, rows=rows))
        else:
            batch.snapshots.append(agent_pb2.SnapshotRecord(sequence=rec.sequence, snapshot=snapshot_to_pb(rec)))
    return batch


def batch_records(batch: agent_pb2.DetectionBatch) -> list[Record]:
    """Every record of a DetectionBatch, in sequence order. InvalidFrame for a bad timestamp."""
    records: list[Record] = [frame_from_pb(f) for f in batch.frames]
    for event in batch.objects:
        obj = object_from_pb(event.object)
        records.append(ObjectEventRecord(event.type, obj, event.sequence))
    for counts in batch.counts:
        records.append(CountRecord([count_row_from_pb(r) for r in counts.rows], counts.sequence))
    for snap in batch.snapshots:
        records.append(snapshot_from_pb(snap.snapshot, snap.sequence))
    if len(records) > len(batch.frames):
        records.sort(key=lambda r: r.sequence)
    return records
