"""One record type for a frame's detections, on the agent and on the controller, and one wire conversion (what the
outbox keeps is what the store lists: tests/contract/test_detections.py)."""
from __future__ import annotations

import pytest

from edgefleet.common.convert import frame_from_pb, frame_to_pb
from edgefleet.common.records import FrameRecord, ObjectRecord
from edgefleet.fleet import convert as fleet_convert
from edgefleet.fleet.errors import InvalidArgument
from edgefleet.v1 import types_pb2


def agent_record() -> FrameRecord:
    return FrameRecord("cam0", 7, 41, 1700000000.25, [
        ObjectRecord(3, 2, "car", 0.87654, (10.25, 20.5, 110.75, 220.0)),
        ObjectRecord(4, 0, 'person "x"', 0.5, (0.0, 1.0, 2.0, 3.0), predicted=True),
    ])


def test_an_agent_record_goes_on_the_wire_as_before_and_comes_back_the_same():
    record = agent_record()
    written = types_pb2.FrameDetections(  # what the agent sent before the record was shared
        stream_id="cam0", sequence=7, frame_index=41,
        detections=[types_pb2.Detection(track_id=3, class_id=2, label="car", score=0.87654,
                                        box=types_pb2.Box(x1=10.25, y1=20.5, x2=110.75, y2=220.0)),
                    types_pb2.Detection(track_id=4, class_id=0, label='person "x"', score=0.5,
                                        box=types_pb2.Box(x1=0.0, y1=1.0, x2=2.0, y2=3.0), predicted=True)])
    written.capture_time.FromNanoseconds(int(1700000000.25 * 1e9))  # as agent.link._timestamp does
    pb = frame_to_pb(record)
    assert pb.SerializeToString() == written.SerializeToString()
    back = frame_from_pb(types_pb2.FrameDetections.FromString(pb.SerializeToString()))
    assert (back.stream_id, back.sequence, back.frame_index, back.device_id) == ("cam0", 7, 41, "")
    assert back.capture_time == pytest.approx(1700000000.25, abs=1e-6)
    assert [(o.track_id, o.label, o.predicted) for o in back.objects] == [(3, "car", False), (4, 'person "x"', True)]
    assert back.objects[1].xyxy == (0.0, 1.0, 2.0, 3.0)


def test_a_capture_time_out_of_range_is_an_invalid_argument_on_the_controller():
    pb = frame_to_pb(agent_record())
    pb.capture_time.seconds = 10**12
    with pytest.raises(InvalidArgument, match="capture_time"):
        fleet_convert.frame_from_pb(pb)
