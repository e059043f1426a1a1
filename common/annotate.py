"""Boxes and their captions drawn on a BGR frame, for pictures people look at (`edgefleet detect --save`,
the TUI's frames). Plain numbers in, so it serves local `Detections` and boxes from the wire alike."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Drawn:
    """One box to draw: `xyxy` in the frame's pixels, `caption` above it (e.g. "person 0.87")."""
    xyxy: Sequence[float]
    caption: str
    class_id: int = 0


def colour_of(class_id: int) -> tuple[int, int, int]:
    """A stable, bright BGR colour per class id."""
    hue = (class_id * 47) % 180
    bgr = cv2.cvtColor(np.array([[[hue, 220, 255]]], np.uint8), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


def annotate(image: np.ndarray, boxes: Iterable[Drawn]) -> np.ndarray:
    """A copy of `image` (BGR, HxWx3 uint8) with each box outlined in its class's colour and its caption
    on a filled band above it (inside the frame when the box touches the top). Line width and font
    scale follow the frame's size, so a 4K frame and a thumbnail read alike."""
    out = image.copy()
    height, width = out.shape[:2]
    thickness = max(1, round(min(width, height) / 320))
    scale = max(0.35, min(width, height) / 900)
    for box in boxes:
        x1, y1, x2, y2 = (int(round(v)) for v in box.xyxy)
        colour = colour_of(box.class_id)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
        (text_w, text_h), baseline = cv2.getTextSize(box.caption, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = y1 - text_h - baseline - 2 if y1 - text_h - baseline - 2 >= 0 else y1
        cv2.rectangle(out, (x1, top), (x1 + text_w + 2, top + text_h + baseline + 2), colour, -1)
        cv2.putText(out, box.caption, (x1 + 1, top + text_h + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                    thickness, cv2.LINE_AA)
    return out
