"""YOLO pre- and post-processing in vectorized numpy: letterbox, Darknet head decode, NMS."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114


@dataclass(frozen=True)
class LetterboxInfo:
    """How a source frame was placed into the network input: input = source * scale + pad."""

    scale: float
    pad_x: float
    pad_y: float
    source_shape: tuple[int, int]  # (height, width)


def letterbox(frame_bgr: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, LetterboxInfo]:
    """Resize keeping the aspect ratio, centre on gray; returns (1,3,H,W) float32 RGB in 0..1."""
    in_w, in_h = size
    h, w = frame_bgr.shape[:2]
    scale = min(in_w / w, in_h / h)
    new_w, new_h = int(round(w * scale)), int(round(h * scale))
    pad_x, pad_y = (in_w - new_w) / 2, (in_h - new_h) / 2
    left, top = int(round(pad_x - 0.1)), int(round(pad_y - 0.1))
    canvas = np.full((in_h, in_w, 3), PAD_VALUE, dtype=np.uint8)
    resized = frame_bgr if (new_w, new_h) == (w, h) else cv2.resize(frame_bgr, (new_w, new_h),
                                                                      interpolation=cv2.INTER_LINEAR)
    canvas[top:top + new_h, left:left + new_w] = resized
    tensor = canvas[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) * (1.0 / 255.0)
    return np.ascontiguousarray(tensor), LetterboxInfo(scale, float(left), float(top), (h, w))


def scale_boxes_to_source(xyxy: np.ndarray, info: LetterboxInfo) -> np.ndarray:
    """Map boxes from network-input pixels back to source pixels, clipped to the frame."""
    out = xyxy.astype(np.float32, copy=True)
    out[:, [0, 2]] = (out[:, [0, 2]] - info.pad_x) / info.scale
    out[:, [1, 3]] = (out[:, [1, 3]] - info.pad_y) / info.scale
    h, w = info.source_shape
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, w)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, h)
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def decode_darknet(
    outputs: list[np.ndarray],
    anchors: np.ndarray,
    masks: list[list[int]],
    input_size: tuple[int, int],
    num_classes: int,
    confidence_threshold: float,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Decode Darknet [yolo] head outputs, one (N, A*(5+nc), H, W) tensor per head.

    Box centre = (cell + sigmoid(t_xy)) * stride, size = exp(t_wh) * anchor (input pixels);
    score = sigmoid(objectness) * sigmoid(class). Returns, per image, the candidates whose
    best class score passes the threshold: (xyxy in input pixels, score, class_id).
    """
    in_w, in_h = input_size
    batch = outputs[0].shape[0]
    per_head = []
    for out, mask in zip(outputs, masks):
        n, _, gh, gw = out.shape
        a = len(mask)
        pred = out.reshape(n, a, 5 + num_classes, gh, gw).transpose(0, 1, 3, 4, 2)  # n,a,gh,gw,5+nc
        pred = pred.reshape(n, -1, 5 + num_classes)
        gy, gx = np.meshgrid(np.arange(gh, dtype=np.float32), np.arange(gw, dtype=np.float32), indexing="ij")
        grid = np.stack([gx, gy], axis=-1).reshape(1, 1, gh * gw, 2)
        grid = np.broadcast_to(grid, (1, a, gh * gw, 2)).reshape(1, -1, 2)
        anchor_wh = np.repeat(anchors[mask].astype(np.float32), gh * gw, axis=0)[None]
        stride = np.array([in_w / gw, in_h / gh], dtype=np.float32)
        centre = (grid + _sigmoid(pred[..., 0:2])) * stride
        wh = np.exp(pred[..., 2:4]) * anchor_wh
        scores = _sigmoid(pred[..., 4:5]) * _sigmoid(pred[..., 5:])
        per_head.append((np.concatenate([centre - wh / 2, centre + wh / 2], axis=-1), scores))
    boxes = np.concatenate([b for b, _ in per_head], axis=1)
    scores = np.concatenate([s for _, s in per_head], axis=1)
    results = []
    for i in range(batch):
        class_id = scores[i].argmax(axis=1)
        best = scores[i][np.arange(len(class_id)), class_id]
        keep = best > confidence_threshold
        results.append((boxes[i][keep], best[keep].astype(np.float32), class_id[keep].astype(np.int32)))
    return results


def nms(xyxy: np.ndarray, scores: np.ndarray, class_id: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Class-aware non-maximum suppression; returns kept indices, best score first.

    Boxes of different classes never suppress each other: each class is shifted into its own
    region of the plane (the torchvision batched_nms trick), then one greedy pass runs.
    """
    if len(xyxy) == 0:
        return np.zeros(0, dtype=np.int64)
    offset = class_id.astype(np.float32)[:, None] * (float(xyxy.max()) + 1.0)
    boxes = xyxy + offset
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iw = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        ih = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = iw * ih
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)
