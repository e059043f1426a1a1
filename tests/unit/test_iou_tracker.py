from __future__ import annotations

import numpy as np

from agent.tracker import IoUTracker
from models.detections import Detections


def dets(*rows) -> Detections:
    """rows: (x1, y1, x2, y2, class_id)."""
    if not rows:
        return Detections.empty()
    arr = np.array(rows, dtype=np.float32)
    return Detections(xyxy=arr[:, :4], confidence=np.full(len(rows), 0.9, np.float32),
                      class_id=arr[:, 4].astype(np.int32))


def test_ids_follow_moving_boxes_and_rows_stay_in_input_order():
    tracker = IoUTracker()
    first = tracker.update(dets((0, 0, 10, 10, 0), (100, 100, 120, 120, 0)))
    assert first.tracker_id.tolist() == [1, 2]
    # same objects moved a little, given in the other order
    second = tracker.update(dets((102, 101, 122, 121, 0), (1, 0, 11, 10, 0)))
    assert second.tracker_id.tolist() == [2, 1]
    assert second.xyxy[0, 0] == 102


def test_class_must_match_to_continue_a_track():
    tracker = IoUTracker()
    tracker.update(dets((0, 0, 10, 10, 0)))
    out = tracker.update(dets((0, 0, 10, 10, 2)))
    assert out.tracker_id.tolist() == [2]


def test_tracks_survive_short_gaps_and_expire_after_the_buffer():
    tracker = IoUTracker(lost_track_buffer=2)
    tracker.update(dets((0, 0, 10, 10, 0)))
    tracker.update(dets())
    tracker.update(dets())
    assert tracker.update(dets((0, 0, 10, 10, 0))).tracker_id.tolist() == [1]
    for _ in range(3):
        tracker.update(dets())
    assert tracker.update(dets((0, 0, 10, 10, 0))).tracker_id.tolist() == [2]


def test_ids_count_per_tracker_instance():
    a, b = IoUTracker(), IoUTracker()
    a.update(dets((0, 0, 10, 10, 0)))
    assert b.update(dets((50, 50, 60, 60, 0))).tracker_id.tolist() == [1]
