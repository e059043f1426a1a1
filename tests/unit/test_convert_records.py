"""Every outbox record kind survives a DetectionBatch both ways (common.convert)."""
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from edgefleet.common.convert import InvalidFrame, batch_records, batch_to_pb
from edgefleet.common.records import (
    CountRecord,
    CountRow,
    FrameRecord,
    ObjectEventRecord,
    ObjectRecord,
    SnapshotRecord,
    TrackedObject,
)
from edgefleet.v1 import agent_pb2


def _object() -> TrackedObject:
    return TrackedObject("1733450000123-a1b2c3", "cam0", 7, "person", 0, 10.0, 12.5, 0.5, (1.0, 2.0, 30.0, 40.0),
                         [(15.5, 40.0, 10.0), (16.0, 42.0, 12.5)], ["door"], [("entry", "in", 11.25)], 31, True, True)


def test_every_kind_round_trips_in_sequence_order():
    records = [
        FrameRecord("cam0", 1, 0, 10.0, [ObjectRecord(7, 0, "person", 0.5, (1.0, 2.0, 30.0, 40.0))]),
        SnapshotRecord("cam0", "1733450000123-a1b2c3", "crop", "person", 11.0, b"\xff\xd8jpeg", 0.25, 2),
        ObjectEventRecord("end", _object(), 3),
        CountRecord([CountRow("cam0", 660, "line", "entry", "person", "in", 2),
                     CountRow("cam0", 660, "zone", "door", "person", "enter", 1)], 4),
    ]
    back = batch_records(agent_pb2.DetectionBatch.FromString(batch_to_pb(records).SerializeToString()))
    assert [r.sequence for r in back] == [1, 2, 3, 4]
    assert back[0] == records[0] and back[1] == records[1] and back[2] == records[2] and back[3] == records[3]


def test_a_bad_timestamp_is_refused_with_the_field_named():
    batch = batch_to_pb([ObjectEventRecord("new", _object(), 1)])
    batch.objects[0].object.last_seen.CopyFrom(Timestamp(seconds=10**13))
    with pytest.raises(InvalidFrame, match="object.last_seen"):
        batch_records(batch)
