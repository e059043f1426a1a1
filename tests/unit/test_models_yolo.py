"""YOLO pre/post-processing: letterbox and its inverse, Darknet head decode, IoU and NMS."""
from __future__ import annotations

import numpy as np
import pytest

from edgefleet.models import yolo
from edgefleet.models.yolo import (
    LetterboxInfo,
    box_iou,
    decode_darknet,
    greedy_pairs,
    letterbox,
    letterbox_batch,
    nms,
    rect_size,
    scale_boxes_to_source,
)


def noise_frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


# ---- letterbox ----

@pytest.mark.parametrize(
    "shape, size, scale, pad_x, pad_y",
    [
        ((576, 768), (416, 416), 416 / 768, 0, 52),    # vtest.avi: 416x312, centred
        ((480, 360), (320, 320), 320 / 480, 40, 0),    # portrait
        ((416, 416), (416, 416), 1.0, 0, 0),           # no resize
        ((100, 200), (64, 64), 0.32, 0, 16),
        ((720, 1280), (640, 384), 0.5, 0, 12),         # non-square input
        ((101, 200), (64, 64), 0.32, 0, 16),           # 32.32 rows -> 32, padding split evenly
        ((99, 200), (64, 64), 0.32, 0, 16),            # 31.68 rows -> 32
        ((200, 93), (64, 64), 0.32, 17, 0),            # 29.76 columns -> 30: 17 left, 17 right
        ((200, 97), (64, 64), 0.32, 16, 0),            # 31.04 columns -> 31: 16 left, the 17th right
    ],
)
def test_letterbox_geometry(shape, size, scale, pad_x, pad_y):
    tensor, info = letterbox(noise_frame(*shape), size)
    assert tensor.shape == (1, 3, size[1], size[0]) and tensor.dtype == np.float32
    assert tensor.flags.c_contiguous
    assert (info.scale, info.pad_x, info.pad_y) == (pytest.approx(scale), pad_x, pad_y)
    assert 0.0 <= tensor.min() and tensor.max() <= 1.0


@pytest.mark.parametrize("shape, size", [((576, 768), (416, 416)), ((272, 640), (416, 416)),
                                          ((480, 360), (320, 320)), ((416, 416), (416, 416)),
                                          ((720, 1280), (640, 384))])
def test_letterbox_round_trip_maps_input_boxes_back_to_source(shape, size):
    _, info = letterbox(noise_frame(*shape), size)
    h, w = shape
    source = np.array([[0, 0, w, h], [w * 0.25, h * 0.5, w * 0.5, h * 0.75], [1, 2, 3, 4]], np.float32)
    in_input = source * info.scale + np.array([info.pad_x, info.pad_y] * 2, np.float32)
    np.testing.assert_allclose(scale_boxes_to_source(in_input, info, (h, w, 3)), source, atol=1e-3)


def test_letterbox_pads_gray_and_feeds_rgb():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[..., 0] = 255  # blue, in BGR order
    tensor, _ = letterbox(frame, (64, 64))
    assert tensor[0, :, 0, 0].tolist() == pytest.approx([114 / 255] * 3)   # pad row
    assert tensor[0, :, 63, 63].tolist() == pytest.approx([114 / 255] * 3)
    assert tensor[0, :, 32, 32].tolist() == pytest.approx([0.0, 0.0, 1.0])  # RGB: blue last


def test_letterbox_batch_stacks_frames_of_different_sizes():
    frames = [noise_frame(576, 768, 1), noise_frame(200, 100, 2)]
    batch, infos = letterbox_batch(frames, (128, 96))
    assert batch.shape == (2, 3, 96, 128)
    for i, frame in enumerate(frames):
        single, info = letterbox(frame, (128, 96))
        np.testing.assert_array_equal(batch[i], single[0])
        assert infos[i] == info


@pytest.mark.parametrize("shapes, size, rect", [
    ([(576, 768)], (416, 416), (416, 320)),               # vtest.avi: 416x312 -> 416x320
    ([(272, 640)], (416, 416), (416, 192)),               # bikes.mp4: 416x177
    ([(480, 360)], (320, 320), (256, 320)),               # portrait: 240 wide
    ([(416, 416)], (416, 416), (416, 416)),
    ([(576, 768), (272, 640)], (416, 416), (416, 320)),   # a batch: what holds them all
    ([(576, 768), (480, 360)], (416, 416), (416, 416)),
])
def test_rect_size_is_the_smallest_stride_multiple_that_holds_the_frames(shapes, size, rect):
    frames = [noise_frame(*shape) for shape in shapes]
    assert rect_size(frames, size) == rect
    square, square_infos = letterbox_batch(frames, size)
    tight, tight_infos = letterbox_batch(frames, rect)
    assert tight.shape == (len(frames), 3, rect[1], rect[0])
    assert [i.scale for i in tight_infos] == pytest.approx([i.scale for i in square_infos])  # the same scale
    for f, (a, b) in enumerate(zip(square_infos, tight_infos)):  # the same pixels, less padding around them
        h, w = round(shapes[f][0] * a.scale), round(shapes[f][1] * a.scale)
        np.testing.assert_array_equal(square[f, :, int(a.pad_y):int(a.pad_y) + h, int(a.pad_x):int(a.pad_x) + w],
                                      tight[f, :, int(b.pad_y):int(b.pad_y) + h, int(b.pad_x):int(b.pad_x) + w])


def test_letterbox_refuses_a_gray_frame():
    with pytest.raises(ValueError, match=r"frame 0: expected an \(H, W, 3\)"):
        letterbox(np.zeros((10, 10), np.uint8))


def test_scale_boxes_clips_to_the_frame():
    info = LetterboxInfo(scale=2.0, pad_x=10, pad_y=0)
    out = scale_boxes_to_source(np.array([[0, -5, 600, 120]], np.float32), info, (50, 200))
    assert out.tolist() == [[0, 0, 200, 50]]


# ---- decode ----

def head_with_one_box(nc=3, anchors_in_head=2, gh=4, gw=4, anchor=1, row=2, col=3, batch=1, image=0):
    """A head where only (image, anchor, row, col) holds an object: objectness 0.9, class 2 at 0.5."""
    head = np.full((batch, anchors_in_head * (5 + nc), gh, gw), -20.0, np.float32)
    base = anchor * (5 + nc)
    head[image, base + 0, row, col] = 0.0            # sigmoid 0.5: the cell's centre
    head[image, base + 1, row, col] = logit(0.25)     # a quarter down the cell
    head[image, base + 2, row, col] = np.log(2.0)     # width = 2 x anchor width
    head[image, base + 3, row, col] = 0.0             # height = anchor height
    head[image, base + 4, row, col] = logit(0.9)
    head[image, base + 5 + 2, row, col] = logit(0.5)
    return head


ANCHORS = np.array([[10, 20], [30, 40], [50, 60]], np.float32)


@pytest.mark.parametrize(
    "input_size, mask, anchor, row, col",
    [
        ((128, 128), [0, 2], 1, 2, 3),   # head anchor 1 -> anchors[2] = 50x60
        ((128, 128), [0, 2], 0, 0, 0),   # anchors[0] = 10x20, top-left cell
        ((256, 128), [1, 2], 0, 3, 1),   # non-square input: stride 64 x 32
    ],
)
def test_decode_places_one_known_box_exactly(input_size, mask, anchor, row, col):
    head = head_with_one_box(anchor=anchor, row=row, col=col)
    (boxes, scores, classes), = decode_darknet([head], ANCHORS, [mask], input_size, 0.25)
    stride_x, stride_y = input_size[0] / 4, input_size[1] / 4
    aw, ah = ANCHORS[mask[anchor]]
    cx, cy, w, h = (col + 0.5) * stride_x, (row + 0.25) * stride_y, 2 * aw, ah
    np.testing.assert_allclose(boxes, [[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]], atol=1e-3)
    np.testing.assert_allclose(scores, [0.45], atol=1e-6)
    assert classes.tolist() == [2] and classes.dtype == np.int32 and boxes.dtype == np.float32


@pytest.mark.parametrize("threshold, expected", [(0.44, 1), (0.46, 0)])
def test_decode_threshold_applies_to_objectness_times_class(threshold, expected):
    (boxes, _, _), = decode_darknet([head_with_one_box()], ANCHORS, [[0, 2]], (128, 128), threshold)
    assert len(boxes) == expected


def test_decode_splits_a_batch_and_merges_heads():
    coarse = head_with_one_box(gh=2, gw=2, row=1, col=1, batch=3, image=2)
    fine = head_with_one_box(gh=4, gw=4, row=0, col=0, batch=3, image=0)
    per_image = decode_darknet([coarse, fine], ANCHORS, [[1, 2], [0, 1]], (64, 64), 0.25)
    assert [len(boxes) for boxes, _, _ in per_image] == [1, 0, 1]
    # fine head (stride 16): anchors[1] 30x40, width doubled, centred at (8, 4)
    np.testing.assert_allclose(per_image[0][0], [[8 - 30, 4 - 20, 8 + 30, 4 + 20]], atol=1e-3)
    # coarse head (stride 32): anchors[2] 50x60, width doubled, centred at (48, 40)
    np.testing.assert_allclose(per_image[2][0], [[48 - 50, 40 - 30, 48 + 50, 40 + 30]], atol=1e-3)


def test_decode_refuses_a_head_that_does_not_fit_its_anchors():
    with pytest.raises(ValueError, match="does not fit 2 anchors"):
        decode_darknet([np.zeros((1, 15, 2, 2), np.float32)], ANCHORS, [[0, 1]], (64, 64))


# ---- IoU and NMS ----

@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
        ([0, 0, 10, 10], [5, 0, 15, 10], 1 / 3),
        ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),     # touching
        ([0, 0, 10, 10], [2, 2, 4, 4], 0.04),       # contained
        ([0, 0, 0, 0], [0, 0, 0, 0], 0.0),          # degenerate, no division by zero
    ],
)
def test_box_iou(a, b, expected):
    assert box_iou(np.array([a]), np.array([b]))[0, 0] == pytest.approx(expected)


def test_box_iou_is_pairwise():
    assert box_iou(np.zeros((3, 4)), np.zeros((0, 4))).shape == (3, 0)
    assert box_iou(np.ones((2, 4)) * [0, 0, 1, 1], np.ones((5, 4)) * [0, 0, 1, 1]).shape == (2, 5)


@pytest.mark.parametrize(
    "boxes, scores, classes, expected",
    [
        ([[0, 0, 10, 10], [1, 1, 11, 11]], [0.9, 0.8], [0, 0], [0]),                    # overlap, same class
        ([[0, 0, 10, 10], [1, 1, 11, 11]], [0.8, 0.9], [0, 0], [1]),                    # better score wins
        ([[0, 0, 10, 10], [1, 1, 11, 11]], [0.9, 0.8], [0, 1], [0, 1]),                 # other class kept
        ([[0, 0, 10, 10], [20, 20, 30, 30]], [0.5, 0.9], [0, 0], [1, 0]),               # apart: both kept
        ([[0, 0, 10, 10], [5, 0, 15, 10]], [0.9, 0.8], [0, 0], [0, 1]),                 # IoU 1/3 <= 0.45
        # box 1 overlaps 0 and goes; 2 overlaps only 1, which is gone, so it stays
        ([[0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10]], [0.9, 0.8, 0.7], [0, 0, 0], [0, 2]),
        ([[-50, -50, 10, 10], [-45, -50, 15, 10]], [0.9, 0.8], [3, 4], [0, 1]),         # negative coords
    ],
)
def test_nms(boxes, scores, classes, expected):
    keep = nms(np.array(boxes, np.float32), np.array(scores, np.float32), np.array(classes), 0.45)
    assert keep.tolist() == expected


def test_nms_empty():
    keep = nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32), 0.5)
    assert keep.tolist() == [] and keep.dtype == np.int64


@pytest.mark.parametrize("matrix_limit", [2048, 10], ids=["iou-matrix", "row-by-row"])
def test_nms_matches_a_plain_greedy_reference_on_random_boxes(monkeypatch, matrix_limit):
    monkeypatch.setattr(yolo, "NMS_MATRIX_LIMIT", matrix_limit)
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 100, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (300, 2))], axis=1).astype(np.float32)
    scores, classes = rng.uniform(size=300).astype(np.float32), rng.integers(0, 3, 300)
    expected, suppressed = [], np.zeros(300, bool)
    for i in np.argsort(-scores, kind="stable"):  # the textbook loop, box by box
        if suppressed[i]:
            continue
        expected.append(i)
        suppressed |= (box_iou(boxes[i], boxes)[0] > 0.45) & (classes == classes[i])
    assert nms(boxes, scores, classes, 0.45).tolist() == expected


def test_greedy_pairs_take_the_best_iou_first_one_to_one():
    iou = np.array([[0.9, 0.8, 0.0],
                    [0.85, 0.0, 0.3],
                    [0.0, 0.0, 0.0]], dtype=np.float32)
    assert greedy_pairs(iou) == [(0, 0), (1, 2)]  # (1, 0) loses column 0 to the better (0, 0)
    assert greedy_pairs(iou, min_iou=0.5) == [(0, 0)]
    assert greedy_pairs(np.array([[0.5, 0.5]], dtype=np.float32)) == [(0, 0)]  # a tie: row-major first
    assert greedy_pairs(np.zeros((0, 3), dtype=np.float32)) == []
