from __future__ import annotations

import numpy as np
import pytest

from edgefleet.agent.bytetrack import NO_TRACK, ByteTrack, ByteTrackConfig
from edgefleet.agent.errors import ConfigError
from edgefleet.models.detections import Detections

W, H = 20.0, 40.0  # every test box is 20 x 40 px unless a builder says otherwise


def frame(*objects) -> Detections:
    """objects: (cx, cy) or (cx, cy, score) or (cx, cy, score, class_id); 20 x 40 boxes."""
    if not objects:
        return Detections.empty()
    rows = [tuple(o) + (0.9, 0)[len(o) - 2:] for o in objects]
    arr = np.array(rows, dtype=np.float64)
    xyxy = np.c_[arr[:, 0] - W / 2, arr[:, 1] - H / 2, arr[:, 0] + W / 2, arr[:, 1] + H / 2]
    return Detections(xyxy, arr[:, 2], arr[:, 3].astype(np.int32))


def ids_by_frame(tracker: ByteTrack, frames: list[Detections]) -> list[list[int]]:
    """`associate()` for each frame: the id of every input row, NO_TRACK (-1) where none."""
    return [tracker.associate(f).tolist() for f in frames]


def walker(x0, y, vx, frames, score=0.9):
    """(cx, cy, score) of an object moving `vx` px per frame along a row."""
    return [(x0 + vx * t, y, score) for t in range(frames)]


# -- identity through motion, crossings and occlusion ----------------------------------------------

@pytest.mark.parametrize("rear_during_overlap", ["detected", "low score", "missing"])
def test_ids_survive_two_objects_crossing(rear_during_overlap):
    # A walks right, B walks left 12 px lower; their boxes overlap for about 8 frames
    a, b = walker(0, 100, 5, 60), walker(300, 112, -5, 60)
    frames = []
    for t in range(60):
        overlapping = abs(a[t][0] - b[t][0]) < W
        if overlapping and rear_during_overlap == "low score":
            frames.append(frame(a[t], (*b[t][:2], 0.3)))
        elif overlapping and rear_during_overlap == "missing":
            frames.append(frame(a[t]))
        else:
            frames.append(frame(a[t], b[t]))
    out = ids_by_frame(ByteTrack(), frames)
    a_ids = {f[0] for f in out if f[0] != NO_TRACK}
    b_ids = {f[1] for f in out if len(f) > 1 and f[1] != NO_TRACK}
    assert a_ids == {1} and b_ids == {2}
    assert out[-1] == [1, 2]


@pytest.mark.parametrize("gap, lost_track_buffer, same_id", [
    (10, 30, True),   # a 10-frame occlusion inside the buffer: the id comes back
    (10, 10, True),   # exactly the buffer
    (10, 9, False),   # one frame too long: removed, a new id
    (40, 30, False),
])
def test_recovery_after_an_occlusion(gap, lost_track_buffer, same_id):
    path = walker(50, 200, 4, 20 + gap + 10)
    frames = [frame(p) if not 20 <= t < 20 + gap else frame() for t, p in enumerate(path)]
    out = ids_by_frame(ByteTrack(lost_track_buffer=lost_track_buffer), frames)
    assert out[19] == [1]
    assert out[20 + gap] == ([1] if same_id else [NO_TRACK])  # a new track is tentative first
    assert out[-1] == ([1] if same_id else [2])


@pytest.mark.parametrize("frame_rate, buffer, frames_kept", [(30, 30, 30), (15, 30, 15), (60, 30, 60)])
def test_lost_buffer_scales_with_frame_rate(frame_rate, buffer, frames_kept):
    tracker = ByteTrack(lost_track_buffer=buffer, frame_rate=frame_rate)
    ids_by_frame(tracker, [frame((100, 100))] * 3)
    for _ in range(frames_kept):
        tracker.update(frame())
    assert len(tracker) == 1
    tracker.update(frame())
    assert len(tracker) == 0


def test_ids_are_never_reused_after_removal():
    tracker = ByteTrack(lost_track_buffer=3)
    seen = []
    for _ in range(4):  # an object appears at the same place, leaves long enough to be removed, comes back
        seen += [i for f in ids_by_frame(tracker, [frame((100, 100))] * 5) for i in f if i != NO_TRACK]
        ids_by_frame(tracker, [frame()] * 5)
        assert len(tracker) == 0
    assert sorted(set(seen)) == [1, 2, 3, 4]


def test_ids_count_per_tracker_instance():
    a, b = ByteTrack(), ByteTrack()
    ids_by_frame(a, [frame((10, 10), (100, 100))] * 3)
    assert ids_by_frame(b, [frame((500, 500))] * 2)[-1] == [1]


# -- what a frame returns ---------------------------------------------------------------------------

@pytest.mark.parametrize("tracker_frames", [0, 1, 5])
def test_empty_frames(tracker_frames):
    tracker = ByteTrack()
    ids_by_frame(tracker, [frame((100, 100), (300, 100))] * tracker_frames)
    for _ in range(3):
        out = tracker.update(Detections.empty())
        assert len(out) == 0 and out.tracker_id is not None
    assert len(tracker.predict_only()) == 0  # every confirmed track is lost now: nothing shown


def test_output_rows_are_the_input_rows_in_input_order():
    tracker = ByteTrack()
    ids_by_frame(tracker, [frame((100, 100), (300, 100), (500, 100))] * 3)
    # the same objects moved and shuffled, with a low-score stray and a brand-new object mixed in
    dets = frame((502, 101, 0.8), (900, 900, 0.3), (301, 99, 0.95), (700, 300, 0.9), (99, 100, 0.7))
    ids = tracker.associate(dets)
    assert ids.tolist() == [3, NO_TRACK, 2, NO_TRACK, 1]
    out = ByteTrack().update(dets)  # a fresh tracker: nothing is confirmed on its first frame
    assert len(out) == 0


def test_update_returns_the_input_boxes_of_matched_rows():
    tracker = ByteTrack()
    rng = np.random.default_rng(0)
    id_of = {}  # object -> its id
    for t in range(8):
        dets = frame(*[(100 + 3 * t + rng.normal(), 100 + 200 * k, 0.6 + 0.05 * k) for k in range(4)])
        order = rng.permutation(4)  # row r is object order[r]
        out = tracker.update(dets[order])
        if t == 0:
            assert len(out) == 0
            continue
        np.testing.assert_array_equal(out.xyxy, dets.xyxy[order])  # the boxes as given, in input order
        np.testing.assert_array_equal(out.confidence, dets.confidence[order])
        for obj, track_id in zip(order.tolist(), out.tracker_id.tolist()):
            assert id_of.setdefault(obj, track_id) == track_id
    assert sorted(id_of.values()) == [1, 2, 3, 4]


@pytest.mark.parametrize("minimum_consecutive_frames, first_id_frame", [(1, 0), (2, 1), (3, 2)])
def test_tracks_are_tentative_until_enough_consecutive_frames(minimum_consecutive_frames, first_id_frame):
    out = ids_by_frame(ByteTrack(minimum_consecutive_frames=minimum_consecutive_frames),
                       [frame((100 + 2 * t, 100)) for t in range(5)])
    assert [f[0] != NO_TRACK for f in out] == [t >= first_id_frame for t in range(5)]


def test_a_tentative_track_that_misses_a_frame_is_dropped():
    tracker = ByteTrack(minimum_consecutive_frames=3)
    out = ids_by_frame(tracker, [frame((100, 100)), frame((100, 100)), frame(), frame((100, 100))])
    assert out == [[NO_TRACK], [NO_TRACK], [], [NO_TRACK]]
    assert len(tracker) == 1  # only the track started on the last frame


# -- the two thresholds ---------------------------------------------------------------------------

@pytest.mark.parametrize("scores, expected", [
    ([0.3] * 6, [NO_TRACK] * 6),                       # low scores never start a track
    ([0.55] * 6, [NO_TRACK] * 6),                      # high, but under track_activation_threshold 0.6
    ([0.9, 0.9, 0.3, 0.3, 0.2, 0.9], [NO_TRACK, 1, 1, 1, 1, 1]),   # low scores extend a track
    ([0.9, 0.9, 0.05, 0.9, 0.9, 0.9], [NO_TRACK, 1, NO_TRACK, 1, 1, 1]),  # under 0.1: ignored (lost, refound)
    ([0.9, 0.3, 0.9, 0.9, 0.9, 0.9], [NO_TRACK, NO_TRACK, NO_TRACK, 1, 1, 1]),  # no tentative via low score
])
def test_low_score_detections_extend_tracks_but_never_start_them(scores, expected):
    tracker = ByteTrack()
    out = ids_by_frame(tracker, [frame((100 + 3 * t, 100, s)) for t, s in enumerate(scores)])
    assert [f[0] for f in out] == expected


@pytest.mark.parametrize("refind_lost_with_low_confidence, weak_id", [(False, NO_TRACK), (True, 1)])
def test_lost_tracks_are_refound_by_low_scores_only_if_configured(refind_lost_with_low_confidence, weak_id):
    tracker = ByteTrack(refind_lost_with_low_confidence=refind_lost_with_low_confidence)
    ids_by_frame(tracker, [frame((100, 100))] * 3 + [frame()])  # confirmed, then lost
    assert ids_by_frame(tracker, [frame((100, 100, 0.3))]) == [[weak_id]]
    assert ids_by_frame(tracker, [frame((100, 100, 0.9))]) == [[1]]


@pytest.mark.parametrize("match_across_classes, second_id", [(False, NO_TRACK), (True, 1)])
def test_tracks_match_their_own_class_unless_configured(match_across_classes, second_id):
    tracker = ByteTrack(match_across_classes=match_across_classes)
    ids_by_frame(tracker, [frame((100, 100, 0.9, 0))] * 3)
    assert ids_by_frame(tracker, [frame((100, 100, 0.9, 2))]) == [[second_id]]


# -- frames without detection ---------------------------------------------------------------------

def test_predict_only_extrapolates_tracked_objects():
    tracker = ByteTrack()
    ids_by_frame(tracker, [frame((100 + 5 * t, 100)) for t in range(20)])
    dets, predicted = tracker.step(None)
    assert dets.tracker_id.tolist() == [1] and predicted.tolist() == [True]
    centre_x = (dets.xyxy[0, 0] + dets.xyxy[0, 2]) / 2
    assert centre_x == pytest.approx(100 + 5 * 20, abs=1.0)  # where the object is on frame 20
    assert tracker.step(frame((105 + 5 * 20, 100)))[1].tolist() == [False]
    assert tracker.update(frame((110 + 5 * 20, 100))).tracker_id.tolist() == [1]


def test_step_leaves_rows_under_min_confidence_out_of_its_output_but_tracks_them():
    tracker = ByteTrack()
    ids_by_frame(tracker, [frame((100 + 2 * t, 100), (300 + 2 * t, 100)) for t in range(3)])  # two confirmed tracks
    dets, predicted = tracker.step(frame((106, 100, 0.9), (306, 100, 0.3)), min_confidence=0.5)
    assert dets.tracker_id.tolist() == [1] and predicted.tolist() == [False]
    dets, _ = tracker.step(frame((108, 100, 0.9), (308, 100, 0.9)))
    assert dets.tracker_id.tolist() == [1, 2], "the low-scoring row kept its track"


def test_predict_only_hides_tentative_tracks():
    tracker = ByteTrack()
    ids_by_frame(tracker, [frame((400, 400))])
    assert len(tracker) == 1 and len(tracker.predict_only()) == 0


@pytest.mark.parametrize("coast", [0, 1, 2])
def test_predict_only_coasts_a_lost_track_through_coast_missed_detections(coast):
    tracker = ByteTrack(coast_missed_detections=coast)
    ids_by_frame(tracker, [frame((100 + 5 * t, 100)) for t in range(20)])  # track 1, moving right
    shown = []
    for t in (20, 22, 24):  # a detected frame the detector misses it on, then a frame not detected
        tracker.update(Detections.empty())
        out = tracker.predict_only()
        shown.append(out.tracker_id.tolist())
        if len(out):
            assert (out.xyxy[0, 0] + out.xyxy[0, 2]) / 2 == pytest.approx(100 + 5 * (t + 1), abs=1.0)
    assert shown == [[1] if misses <= coast else [] for misses in (1, 2, 3)]
    assert tracker.update(frame((100 + 5 * 26, 100))).tracker_id.tolist() == [1]
    assert tracker.predict_only().tracker_id.tolist() == [1], "a match resets the misses"


# -- scale and configuration -----------------------------------------------------------------------

def test_a_thousand_objects():
    grid = np.stack(np.meshgrid(np.arange(40) * 30.0, np.arange(25) * 50.0), -1).reshape(-1, 2)
    tracker = ByteTrack()
    for t in range(4):
        out = tracker.update(frame(*[(x + 2 * t, y) for x, y in grid]))
    assert len(out) == 1000
    assert sorted(out.tracker_id.tolist()) == list(range(1, 1001))


@pytest.mark.parametrize("field, value", [
    ("high_confidence_threshold", 1.5),
    ("minimum_matching_threshold", 1.0),
    ("lost_track_buffer", -1),
    ("coast_missed_detections", -1),
    ("minimum_consecutive_frames", 0),
    ("frame_rate", 0),
    ("low_confidence_threshold", 0.7),  # above the high threshold
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        ByteTrackConfig(**{field: value})
