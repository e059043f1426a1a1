"""`Detections`: shapes and dtypes checked at the door, rows selected without loops."""
from __future__ import annotations

import numpy as np
import pytest

from edgefleet.models.detections import Detections


def dets(n: int, tracker_start: int | None = None) -> Detections:
    """n rows: boxes 0..4n, scores evenly 0.1..0.9, classes 0,1,2,0,..."""
    tracker_id = None if tracker_start is None else np.arange(tracker_start, tracker_start + n)
    return Detections(np.arange(n * 4, dtype=np.float64).reshape(n, 4), np.linspace(0.1, 0.9, n),
                      np.arange(n) % 3, tracker_id)


@pytest.mark.parametrize(
    "xyxy, confidence, class_id, tracker_id, field",
    [
        (np.zeros((2, 3)), np.zeros(2), np.zeros(2), None, "xyxy"),
        (np.zeros(4), np.zeros(1), np.zeros(1), None, "xyxy"),
        (np.zeros((2, 4)), np.zeros(3), np.zeros(2), None, "confidence"),
        (np.zeros((2, 4)), np.zeros(2), np.zeros((2, 1)), None, "class_id"),
        (np.zeros((2, 4)), np.zeros(2), np.zeros(2), np.zeros(1), "tracker_id"),
        (np.zeros((0, 4)), np.zeros(0), np.zeros(1), None, "class_id"),
    ],
)
def test_wrong_shapes_are_refused_naming_the_field(xyxy, confidence, class_id, tracker_id, field):
    with pytest.raises(ValueError, match=rf"Detections\.{field} must have shape"):
        Detections(xyxy, confidence, class_id, tracker_id)


def test_dtypes_are_coerced():
    d = dets(3, tracker_start=1)
    assert (d.xyxy.dtype, d.confidence.dtype, d.class_id.dtype, d.tracker_id.dtype) == (
        np.float32, np.float32, np.int32, np.int64)
    assert Detections([], [], []).xyxy.shape == (0, 4)


@pytest.mark.parametrize(
    "select, expected_classes",
    [
        (lambda d: d.confidence > 0.5, [0, 1]),
        (lambda d: np.array([4, 0]), [1, 0]),
        (lambda d: slice(1, 3), [1, 2]),
        (lambda d: 2, [2]),
        (lambda d: d.class_id == 7, []),
    ],
    ids=["mask", "index-array", "slice", "int", "empty-mask"],
)
def test_rows_are_selected_as_detections(select, expected_classes):
    d = dets(5, tracker_start=10)
    picked = d[select(d)]
    assert isinstance(picked, Detections)
    assert picked.class_id.tolist() == expected_classes
    assert len(picked) == len(expected_classes) == len(picked.tracker_id) == len(picked.xyxy)


def test_empty():
    empty = Detections.empty()
    assert len(empty) == 0 and empty.xyxy.shape == (0, 4) and empty.tracker_id is None


@pytest.mark.parametrize(
    "parts, expected_len, tracked",
    [
        ([], 0, False),
        ([Detections.empty()], 0, False),
        ([dets(2), Detections.empty(), dets(3)], 5, False),
        ([dets(2, 1), dets(1, 5)], 3, True),
        ([dets(2, 1), Detections.empty()], 2, True),
    ],
)
def test_merge(parts, expected_len, tracked):
    merged = Detections.merge(parts)
    assert len(merged) == expected_len
    assert (merged.tracker_id is not None) == tracked


def test_merge_refuses_tracked_with_untracked():
    with pytest.raises(ValueError, match="tracked and untracked"):
        Detections.merge([dets(1, tracker_start=7), dets(1)])


def test_labels_fall_back_to_the_number():
    d = Detections(np.zeros((3, 4)), np.ones(3), [0, 1, 5])
    assert d.labels(["person", "bicycle"]) == ["person", "bicycle", "5"]
