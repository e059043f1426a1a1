"""YOLO pre- and post-processing in vectorized numpy: letterbox, head decoders, IoU, NMS.

Three head layouts: Darknet [yolo] heads (`decode_darknet`, anchors and grid in numpy),
Ultralytics' anchor-free heads (`decode_ultralytics`: YOLOv5u/v8/11 exports, boxes already in
input pixels) and end-to-end outputs whose graph already ran NMS or is NMS-free
(`decode_end2end`: Ultralytics `nms=True` exports, YOLOv10/YOLO26 heads). The first two need
`nms` afterwards; the last does not.

Conventions (the same as Darknet's and Ultralytics' letterbox): keep the aspect ratio, centre
the resized frame on gray 114, feed RGB in 0..1 as NCHW float32. Boxes are `xyxy` pixels:
network-input pixels out of `decode_darknet`, source pixels after `scale_boxes_to_source`.
No OpenCV DNN calls: the behaviour must not depend on the OpenCV version (cv2 only resizes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114
_INV_255 = np.float32(1.0 / 255.0)
DEFAULT_INPUT_SIZE = (416, 416)


@dataclass(frozen=True)
class LetterboxInfo:
    """Where a source frame went in the network input: input_xy = source_xy * scale + (pad_x, pad_y)."""

    scale: float
    pad_x: float
    pad_y: float


def _place(frame_bgr: np.ndarray, chw: np.ndarray) -> LetterboxInfo:
    """Resize `frame_bgr` into the middle of `chw` (3, H, W float32), gray around it.

    The BGR->RGB swap, the HWC->CHW layout and the /255 happen in one pass per channel,
    straight into the network's tensor (no uint8 canvas, no transposed copy).
    """
    in_h, in_w = chw.shape[1:]
    h, w = frame_bgr.shape[:2]
    scale = min(in_w / w, in_h / h)
    new_w, new_h = int(round(w * scale)), int(round(h * scale))
    # Ultralytics' rounding: an odd padding puts the extra pixel on the right/bottom.
    left, top = int(round((in_w - new_w) / 2 - 0.1)), int(round((in_h - new_h) / 2 - 0.1))
    resized = frame_bgr if (new_w, new_h) == (w, h) else cv2.resize(
        frame_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    if (new_w, new_h) != (in_w, in_h):
        chw.fill(PAD_VALUE / 255.0)
    for channel in range(3):
        np.multiply(resized[:, :, 2 - channel], _INV_255, out=chw[channel, top:top + new_h, left:left + new_w],
                    casting="unsafe")
    return LetterboxInfo(scale, float(left), float(top))


def rect_size(frames_bgr: list[np.ndarray], size: tuple[int, int] = DEFAULT_INPUT_SIZE,
              stride: int = 32) -> tuple[int, int]:
    """The smallest (width, height) within `size`, multiples of `stride`, that holds every frame
    letterboxed at the scale `size` gives it (Ultralytics' rectangular inference): 768x576 frames
    into 416x416 need only 416x320. Letterboxing into it scales the frames exactly as into `size`."""
    in_w, in_h = size
    width = height = stride
    for frame in frames_bgr:
        h, w = frame.shape[:2]
        scale = min(in_w / w, in_h / h)
        width = max(width, math.ceil(round(w * scale) / stride) * stride)
        height = max(height, math.ceil(round(h * scale) / stride) * stride)
    return min(width, in_w), min(height, in_h)


def letterbox_batch(frames_bgr: list[np.ndarray], size: tuple[int, int] = DEFAULT_INPUT_SIZE,
                    ) -> tuple[np.ndarray, list[LetterboxInfo]]:
    """Letterbox frames of any sizes into one (N, 3, H, W) float32 RGB tensor in 0..1."""
    in_w, in_h = size
    tensor = np.empty((len(frames_bgr), 3, in_h, in_w), dtype=np.float32)
    infos = []
    for i, frame in enumerate(frames_bgr):  # one resize per frame, not per box
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frame {i}: expected an (H, W, 3) BGR image, got shape {frame.shape}")
        infos.append(_place(frame, tensor[i]))
    return tensor, infos


def letterbox(frame_bgr: np.ndarray, size: tuple[int, int] = DEFAULT_INPUT_SIZE,
              ) -> tuple[np.ndarray, LetterboxInfo]:
    """One frame as a (1, 3, H, W) float32 RGB tensor in 0..1; `size` is (width, height)."""
    tensor, (info,) = letterbox_batch([frame_bgr], size)
    return tensor, info


def scale_boxes_to_source(xyxy: np.ndarray, info: LetterboxInfo, source_shape: tuple[int, ...]) -> np.ndarray:
    """Map (n, 4) boxes from network-input pixels back to the source frame, clipped to it.

    `source_shape` is the frame's shape, (height, width) or (height, width, channels).
    """
    h, w = source_shape[:2]
    out = np.asarray(xyxy, dtype=np.float32).reshape(-1, 4).copy()
    out -= np.array([info.pad_x, info.pad_y, info.pad_x, info.pad_y], dtype=np.float32)
    out /= np.float32(info.scale)
    np.clip(out, 0, np.array([w, h, w, h], dtype=np.float32), out=out)
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for x << 0: sigmoid is then exactly 0
        return 1.0 / (1.0 + np.exp(-x))


def decode_darknet(
    outputs: list[np.ndarray],
    anchors: np.ndarray,
    masks: list[list[int]],
    input_size: tuple[int, int],
    confidence_threshold: float = 0.25,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Decode raw Darknet [yolo] heads into per-image candidates before NMS.

    outputs: one (N, A*(5+nc), H, W) tensor per head; anchors: (K, 2) in input pixels;
    masks: the anchor indices of each head; input_size: (width, height) the network ran at.
    Box centre = (cell + sigmoid(t_xy)) * stride, size = exp(t_wh) * anchor;
    score = sigmoid(objectness) * sigmoid(class logit); the best class per box is kept when
    its score is above `confidence_threshold` (a higher threshold: fewer, surer candidates).
    Returns, per image, (xyxy float32 (k, 4) in input pixels, score float32 (k,), class_id int32 (k,)).
    """
    in_w, in_h = input_size
    anchors = np.asarray(anchors, dtype=np.float32).reshape(-1, 2)
    batch = outputs[0].shape[0]
    images: list[np.ndarray] = []
    boxes: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    classes: list[np.ndarray] = []
    for out, mask in zip(outputs, masks, strict=True):  # one pass per head (2-3), vectorized inside
        n, channels, gh, gw = out.shape
        a = len(mask)
        if channels % a or channels // a < 6:
            raise ValueError(
                f"head with {channels} channels does not fit {a} anchors of (5 + classes) values")
        pred = out.reshape(n, a, channels // a, gh * gw)
        objectness = _sigmoid(pred[:, :, 4, :])
        # score = objectness * class probability <= objectness: only these cells can pass.
        b, k, cell = np.nonzero(objectness > confidence_threshold)
        class_scores = objectness[b, k, cell][:, None] * _sigmoid(pred[b, k, 5:, cell])
        best = class_scores.argmax(axis=1)
        best_score = class_scores[np.arange(len(best)), best]
        passed = best_score > confidence_threshold
        b, k, cell, best, best_score = b[passed], k[passed], cell[passed], best[passed], best_score[passed]
        t = pred[b, k, :4, cell]
        stride = np.array([in_w / gw, in_h / gh], dtype=np.float32)
        grid = np.stack([cell % gw, cell // gw], axis=1).astype(np.float32)
        centre = (grid + _sigmoid(t[:, :2])) * stride
        with np.errstate(over="ignore"):
            wh = np.exp(t[:, 2:4]) * anchors[np.asarray(mask)[k]]
        images.append(b)
        boxes.append(np.concatenate([centre - wh / 2, centre + wh / 2], axis=1))
        scores.append(best_score)
        classes.append(best)
    image = np.concatenate(images)
    xyxy = np.concatenate(boxes).astype(np.float32, copy=False)
    score = np.concatenate(scores).astype(np.float32, copy=False)
    class_id = np.concatenate(classes).astype(np.int32, copy=False)
    results = []
    for i in range(batch):  # split per image
        rows = image == i
        results.append((xyxy[rows], score[rows], class_id[rows]))
    return results


def box_iou(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union, shape (len(a), len(b)); zero-area unions give 0."""
    a = np.asarray(a_xyxy, dtype=np.float32).reshape(-1, 1, 4)
    b = np.asarray(b_xyxy, dtype=np.float32).reshape(1, -1, 4)
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0).astype(np.float32)


def greedy_pairs(iou: np.ndarray, min_iou: float = 0.0) -> list[tuple[int, int]]:
    """One-to-one (row, column) pairs of an IoU matrix, best IoU first, each above 0 and at least
    `min_iou`; ties go to the first in row-major order. Mask the matrix to 0 where pairs may not
    form (another class, say) before calling."""
    pairs, rows, cols = [], set(), set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        i, j = divmod(int(flat), iou.shape[1])
        if iou[i, j] <= 0 or iou[i, j] < min_iou:
            break
        if i not in rows and j not in cols:
            rows.add(i)
            cols.add(j)
            pairs.append((i, j))
    return pairs


NMS_MATRIX_LIMIT = 2048
"""Up to this many candidates NMS computes their IoU matrix once (n² floats: 16 MB at the limit);
above it, one IoU row per kept box, so memory stays linear on pathological frames."""


def nms(xyxy: np.ndarray, scores: np.ndarray, class_id: np.ndarray,
        iou_threshold: float = 0.45) -> np.ndarray:
    """Greedy class-aware non-maximum suppression; returns the kept indices, best score first.

    A box is dropped when it overlaps a better-scoring kept box of the same class by IoU above
    `iou_threshold` (higher: more duplicates survive; lower: neighbours merge). Boxes of
    different classes never suppress each other. The result is the classic greedy algorithm's
    (OpenCV's NMSBoxes, torchvision's nms): the same-class IoU matrix is computed once, then
    each kept box knocks out its row, one vectorized step per kept box.
    """
    if len(xyxy) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-np.asarray(scores), kind="stable")
    boxes = np.asarray(xyxy, dtype=np.float32)[order]
    classes = np.asarray(class_id)[order]
    if len(order) > NMS_MATRIX_LIMIT:
        return order[_nms_by_rows(boxes, classes, iou_threshold)]
    over = (box_iou(boxes, boxes) > iou_threshold) & (classes[:, None] == classes[None, :])
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    best = 0
    while True:
        keep.append(best)
        suppressed |= over[best]
        left = np.flatnonzero(~suppressed[best + 1:])
        if not left.size:
            break
        best += 1 + int(left[0])
    return order[np.asarray(keep, dtype=np.int64)]


def _nms_by_rows(boxes: np.ndarray, classes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """`nms` on boxes already sorted best first, one IoU row per kept box (linear memory)."""
    order = np.arange(len(boxes))
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        overlap = box_iou(boxes[best], boxes[rest])[0]
        order = rest[(overlap <= iou_threshold) | (classes[rest] != classes[best])]
    return np.asarray(keep, dtype=np.int64)


def _split_by_image(batch: int, image: np.ndarray, xyxy: np.ndarray, score: np.ndarray, class_id: np.ndarray,
                    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Rows grouped per image; `image` must be sorted (np.nonzero's row-major order is)."""
    bounds = np.searchsorted(image, np.arange(batch + 1))
    return [(xyxy[a:b], score[a:b], class_id[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def decode_ultralytics(
    output: np.ndarray,
    input_size: tuple[int, int],
    confidence_threshold: float = 0.25,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Decode an Ultralytics anchor-free detect head (YOLOv5u, v8, 11 exports) into candidates before NMS.

    output: (N, 4 + nc, A) float32, per anchor (cx, cy, w, h) in input pixels and nc class
    scores already through their sigmoid (there is no objectness). input_size: (width, height)
    the network ran at, the pixels the boxes come back in; unlike Darknet's heads this one has
    already applied its grid and strides, so the size only serves the uniform decoder signature.
    The best class per anchor is kept when its score is above `confidence_threshold` (higher:
    fewer, surer candidates and a cheaper NMS); only those survivors are converted to xyxy.
    Returns, per image, (xyxy float32 (k, 4) in input pixels, score float32 (k,), class_id int32 (k,)).
    """
    output = np.asarray(output, dtype=np.float32)
    if output.ndim != 3 or output.shape[1] < 5:
        raise ValueError(f"expected an (N, 4 + classes, anchors) head output, got shape {output.shape}"
                         f" at input {input_size[0]}x{input_size[1]}")
    class_scores = output[:, 4:, :]
    best_score = class_scores.max(axis=1)  # (N, A): one pass over the scores, nothing else touched
    image, anchor = np.nonzero(best_score > confidence_threshold)
    class_id = class_scores[image, :, anchor].argmax(axis=1).astype(np.int32)
    score = best_score[image, anchor]
    cxcywh = output[image, :4, anchor]
    half = cxcywh[:, 2:4] * np.float32(0.5)
    xyxy = np.concatenate([cxcywh[:, :2] - half, cxcywh[:, :2] + half], axis=1)
    return _split_by_image(output.shape[0], image, xyxy, score, class_id)


def decode_end2end(output: np.ndarray, confidence_threshold: float = 0.25,
                   ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Rows of an end-to-end output, (N, K, 6) = (x1, y1, x2, y2, score, class) in input pixels.

    For graphs that select their own boxes: Ultralytics exports with `nms=True` (zero rows pad
    each image to K) and NMS-free YOLOv10/YOLO26 heads (the top K anchors, low scores included).
    Rows scoring above `confidence_threshold` are kept, in the graph's order; no NMS follows.
    Returns, per image, (xyxy float32 (k, 4), score float32 (k,), class_id int32 (k,)).
    """
    output = np.asarray(output, dtype=np.float32)
    if output.ndim != 3 or output.shape[2] != 6:
        raise ValueError(f"expected an (N, K, 6) end-to-end output (x1, y1, x2, y2, score, class), "
                         f"got shape {output.shape}")
    image, row = np.nonzero(output[:, :, 4] > confidence_threshold)
    kept = output[image, row]
    return _split_by_image(output.shape[0], image, kept[:, :4], kept[:, 4],
                           np.rint(kept[:, 5]).astype(np.int32))
