from __future__ import annotations

import numpy as np
import pytest

from models.detections import Detections
from models.yolo import LetterboxInfo, decode_darknet, letterbox, nms, scale_boxes_to_source


def dets(n: int) -> Detections:
    return Detections(np.arange(n * 4, dtype=np.float32).reshape(n, 4), np.linspace(0.1, 0.9, n),
                      np.arange(n) % 3)


# ---- Detections ----

@pytest.mark.parametrize(
    "xyxy, confidence, class_id, field",
    [
        (np.zeros((2, 3)), np.zeros(2), np.zeros(2), "xyxy"),
        (np.zeros((2, 4)), np.zeros(3), np.zeros(2), "confidence"),
        (np.zeros((2, 4)), np.zeros(2), np.zeros((2, 1)), "class_id"),
    ],
)
def test_detections_shape_errors_name_the_field(xyxy, confidence, class_id, field):
    with pytest.raises(ValueError, match=field):
        Detections(xyxy, confidence, class_id)


def test_detections_coerce_dtypes_and_slice_by_mask_index_and_slice():
    d = dets(5)
    assert (d.xyxy.dtype, d.confidence.dtype, d.class_id.dtype) == (np.float32, np.float32, np.int32)
    assert len(d[d.confidence > 0.5]) == 2
    assert d[np.array([4, 0])].class_id.tolist() == [1, 0]
    assert len(d[1:3]) == 2
    assert len(d[2]) == 1


def test_detections_empty_and_merge():
    empty = Detections.empty()
    assert len(empty) == 0 and empty.xyxy.shape == (0, 4)
    merged = Detections.merge([dets(2), empty, dets(3)])
    assert len(merged) == 5 and merged.tracker_id is None
    assert len(Detections.merge([])) == 0
    tracked = dets(1)
    tracked.tracker_id = np.array([7])
    with pytest.raises(ValueError, match="tracked"):
        Detections.merge([tracked, dets(1)])


# ---- letterbox ----

@pytest.mark.parametrize("shape, size", [((576, 768), (416, 416)), ((272, 640), (416, 416)), ((480, 360), (320, 320)),
                                          ((416, 416), (416, 416))])
def test_letterbox_round_trip_maps_input_boxes_back_to_source(shape, size):
    frame = np.random.default_rng(0).integers(0, 255, (*shape, 3), dtype=np.uint8)
    tensor, info = letterbox(frame, size)
    assert tensor.shape == (1, 3, size[1], size[0]) and tensor.dtype == np.float32
    assert 0.0 <= tensor.min() and tensor.max() <= 1.0
    h, w = shape
    source = np.array([[0, 0, w, h], [w * 0.25, h * 0.5, w * 0.5, h * 0.75]], np.float32)
    in_input = source * info.scale + np.array([info.pad_x, info.pad_y] * 2, np.float32)
    np.testing.assert_allclose(scale_boxes_to_source(in_input, info), source, atol=1e-3)


def test_letterbox_pads_with_gray_and_keeps_rgb_order():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[..., 0] = 255  # blue in BGR
    tensor, info = letterbox(frame, (64, 64))
    assert info.pad_y == 16 and info.pad_x == 0
    assert tensor[0, :, 0, 0].tolist() == pytest.approx([114 / 255] * 3)
    assert tensor[0, :, 32, 32].tolist() == pytest.approx([0.0, 0.0, 1.0])  # RGB: blue last


def test_scale_boxes_clips_to_the_frame():
    info = LetterboxInfo(scale=1.0, pad_x=0, pad_y=0, source_shape=(100, 200))
    out = scale_boxes_to_source(np.array([[-5, -5, 250, 120]], np.float32), info)
    assert out.tolist() == [[0, 0, 200, 100]]


# ---- decode ----

def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def test_decode_darknet_places_one_known_box_exactly():
    nc, a, gh, gw = 3, 2, 4, 4
    head = np.full((1, a * (5 + nc), gh, gw), -20.0, np.float32)  # everything ~0 probability
    anchor, row, col = 1, 2, 3
    base = anchor * (5 + nc)
    head[0, base + 0, row, col] = 0.0             # sigmoid 0.5 -> centre of the cell
    head[0, base + 1, row, col] = 0.0
    head[0, base + 2, row, col] = np.log(2.0)     # width = 2 x anchor
    head[0, base + 3, row, col] = 0.0             # height = anchor
    head[0, base + 4, row, col] = logit(0.9)      # objectness
    head[0, base + 5 + 2, row, col] = logit(0.5)  # class 2
    anchors = np.array([[10, 20], [30, 40], [50, 60]], np.float32)
    (boxes, scores, classes), = decode_darknet([head], anchors, [[0, 2]], (128, 128), nc, 0.25)
    stride = 128 / 4
    cx, cy, w, h = (col + 0.5) * stride, (row + 0.5) * stride, 2 * 50, 60
    np.testing.assert_allclose(boxes, [[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]], atol=1e-3)
    np.testing.assert_allclose(scores, [0.45], atol=1e-5)
    assert classes.tolist() == [2]


# ---- NMS ----

@pytest.mark.parametrize(
    "boxes, scores, classes, expected",
    [
        ([[0, 0, 10, 10], [1, 1, 11, 11]], [0.9, 0.8], [0, 0], [0]),          # overlap, same class
        ([[0, 0, 10, 10], [1, 1, 11, 11]], [0.8, 0.9], [0, 0], [1]),          # best score wins
        ([[0, 0, 10, 10], [1, 1, 11, 11]], [0.9, 0.8], [0, 1], [0, 1]),       # other class kept
        ([[0, 0, 10, 10], [20, 20, 30, 30]], [0.5, 0.9], [0, 0], [1, 0]),     # apart: both, by score
        ([[0, 0, 10, 10], [5, 0, 15, 10]], [0.9, 0.8], [0, 0], [0, 1]),       # IoU 1/3 <= 0.45
    ],
)
def test_nms(boxes, scores, classes, expected):
    keep = nms(np.array(boxes, np.float32), np.array(scores, np.float32), np.array(classes), 0.45)
    assert keep.tolist() == expected


def test_nms_empty():
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32), 0.5).tolist() == []
