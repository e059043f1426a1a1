"""Pictures people look at: a frame with its boxes, zones and lines drawn, cropped, downscaled and
encoded as a size-capped JPEG. One API for `edgefleet detect --save`, the agent's snapshots and
CaptureFrame, and the TUI. Plain numbers in (no `Detections`, no protobuf), so local detections and
boxes from the wire draw alike.

    draw(image, boxes, zones=(), lines=(), scale=1.0) -> np.ndarray
        A copy of `image` (BGR HxWx3 uint8) with zones and lines underneath and boxes on top.
        `boxes`: `Box(xyxy, label, score, track_id=0)` or plain `(xyxy, label, score, track_id)`
        tuples; the caption reads "person 0.87 #12" (no "#" when track_id is 0), the colour follows the
        label. `zones`: `ZoneShape(name, polygon, occupancy=None)`, the polygon closed, captioned
        "name: 3" when occupancy is given. `lines`: `LineShape(name, points, counts=None)`, captioned
        "name in 4 out 1" with whatever counts text is given. Coordinates are the source frame's
        pixels; `scale` multiplies them all, for drawing on a downscaled copy.
    render(image, boxes, zones=(), lines=(), max_width=None, max_side=None) -> np.ndarray
        Downscale first, then draw at that scale: cheaper than drawing on the full frame, and the
        captions are sized for the picture people will see.
    downscale(image, max_width=None, max_side=None) -> (image, factor)
        No wider than `max_width` and no side longer than `max_side` (None: no bound), aspect kept,
        never enlarged; `factor` (<= 1) is new size / old size. The same array when nothing shrinks.
    crop(image, xyxy, pad=0.1, max_side=320) -> np.ndarray
        The box grown by `pad` of its width and height on each side, clipped to the frame, then
        downscaled to `max_side`; a copy, so it does not keep the whole frame alive. ValueError when
        nothing of the box lies in the frame.
    encode_jpeg(image, max_width=None, max_side=None, quality=80, max_bytes=100_000) -> bytes
        Downscale, then encode at `quality`, lowering it QUALITY_STEP at a time down to MIN_QUALITY
        until the JPEG fits `max_bytes`; ValueError when even MIN_QUALITY does not fit (downscale more).

Line width and font scale follow the picture's size, so a 4K frame and a thumbnail read alike; zones and
lines are drawn a pixel wider than boxes, so that their colour survives JPEG's coarser colour sampling.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import cv2
import numpy as np

MIN_QUALITY = 10
QUALITY_STEP = 10
ZONE_COLOUR = (255, 200, 0)    # BGR: light blue
LINE_COLOUR = (255, 0, 255)    # BGR: magenta
FONT = cv2.FONT_HERSHEY_SIMPLEX


class Box(NamedTuple):
    xyxy: Sequence[float]
    label: str
    score: float
    track_id: int = 0


class ZoneShape(NamedTuple):
    name: str
    polygon: Sequence[Sequence[float]] | np.ndarray
    occupancy: int | None = None


class LineShape(NamedTuple):
    name: str
    points: Sequence[Sequence[float]] | np.ndarray
    counts: str | None = None


def colour_of(label: str) -> tuple[int, int, int]:
    """A stable, bright BGR colour per label (the same in every process: crc32, not hash())."""
    hue = zlib.crc32(label.encode()) % 180
    bgr = cv2.cvtColor(np.array([[[hue, 220, 255]]], np.uint8), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


def caption_of(label: str, score: float, track_id: int = 0) -> str:
    return f"{label} {score:.2f}" + (f" #{track_id}" if track_id else "")


def draw(image: np.ndarray, boxes: Iterable[Box | tuple] = (), zones: Iterable[ZoneShape | tuple] = (),
         lines: Iterable[LineShape | tuple] = (), scale: float = 1.0) -> np.ndarray:
    """A copy of `image` with the zones and lines, then the boxes, drawn (see the module's docstring)."""
    _check_image(image)
    out = image.copy()
    height, width = out.shape[:2]
    thickness = max(1, round(min(width, height) / 320))
    font_scale = max(0.35, min(width, height) / 900)
    for zone in map(ZoneShape._make, zones):
        pts = _pixels(zone.polygon, scale)
        cv2.polylines(out, [pts], True, ZONE_COLOUR, thickness + 1)
        text = zone.name if zone.occupancy is None else f"{zone.name}: {zone.occupancy}"
        top = pts[np.argmin(pts[:, 1])]
        _caption(out, text, int(top[0]), int(top[1]), ZONE_COLOUR, font_scale, thickness)
    for line in map(LineShape._make, lines):
        pts = _pixels(line.points, scale)
        cv2.polylines(out, [pts], False, LINE_COLOUR, thickness + 1)
        text = line.name if not line.counts else f"{line.name} {line.counts}"
        _caption(out, text, int(pts[0][0]), int(pts[0][1]), LINE_COLOUR, font_scale, thickness)
    for box in map(Box._make, boxes):
        x1, y1, x2, y2 = (int(round(float(v) * scale)) for v in box.xyxy)
        colour = colour_of(box.label)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
        _caption(out, caption_of(box.label, float(box.score), int(box.track_id)), x1, y1, colour, font_scale,
                 thickness)
    return out


def render(image: np.ndarray, boxes: Iterable[Box | tuple] = (), zones: Iterable[ZoneShape | tuple] = (),
           lines: Iterable[LineShape | tuple] = (), max_width: int | None = None,
           max_side: int | None = None) -> np.ndarray:
    """`draw` on the downscaled frame, coordinates scaled to it."""
    small, factor = downscale(image, max_width, max_side)
    return draw(small, boxes, zones, lines, scale=factor)


def downscale(image: np.ndarray, max_width: int | None = None,
              max_side: int | None = None) -> tuple[np.ndarray, float]:
    """The image within the bounds (aspect kept, never enlarged) and the factor applied."""
    height, width = image.shape[:2]
    factor = 1.0
    if max_width is not None:
        factor = min(factor, _positive("max_width", max_width) / width)
    if max_side is not None:
        factor = min(factor, _positive("max_side", max_side) / max(width, height))
    if factor >= 1.0:
        return image, 1.0
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), size[0] / width


def crop(image: np.ndarray, xyxy: Sequence[float], pad: float = 0.1, max_side: int | None = 320) -> np.ndarray:
    """The padded box cut out of the frame (clipped to it) and downscaled; a copy."""
    height, width = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    grow_x, grow_y = (x2 - x1) * pad, (y2 - y1) * pad
    left, top = max(0, int(np.floor(x1 - grow_x))), max(0, int(np.floor(y1 - grow_y)))
    right, bottom = min(width, int(np.ceil(x2 + grow_x))), min(height, int(np.ceil(y2 + grow_y)))
    if right <= left or bottom <= top:
        raise ValueError(f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies outside the {width}x{height} frame")
    cut, _ = downscale(image[top:bottom, left:right], max_side=max_side)
    return cut.copy() if cut.base is not None else cut


def encode_jpeg(image: np.ndarray, max_width: int | None = None, max_side: int | None = None, quality: int = 80,
                max_bytes: int = 100_000) -> bytes:
    """The image as a JPEG of at most `max_bytes`, quality lowered step by step until it fits."""
    if not MIN_QUALITY <= quality <= 100:
        raise ValueError(f"quality {quality}: must be {MIN_QUALITY}..100")
    small, _ = downscale(image, max_width, max_side)
    sizes = []
    for q in range(quality, MIN_QUALITY - 1, -QUALITY_STEP):
        ok, data = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, q])
        if not ok:
            raise ValueError(f"cannot encode a {small.shape} {small.dtype} image as JPEG")
        if data.nbytes <= max_bytes:
            return data.tobytes()
        sizes.append(f"{data.nbytes} at quality {q}")
    width, height = small.shape[1], small.shape[0]
    raise ValueError(f"a {width}x{height} JPEG does not fit {max_bytes} bytes ({', '.join(sizes[-2:])}); "
                     "downscale it more")


def _caption(out: np.ndarray, text: str, x: int, y: int, colour: tuple[int, int, int], font_scale: float,
             thickness: int) -> None:
    """`text` in black on a band of `colour` just above (x, y), or just below it at the frame's top."""
    (text_w, text_h), baseline = cv2.getTextSize(text, FONT, font_scale, thickness)
    band = text_h + baseline + 2
    top = y - band if y - band >= 0 else y
    cv2.rectangle(out, (x, top), (x + text_w + 2, top + band), colour, -1)
    cv2.putText(out, text, (x + 1, top + text_h + 1), FONT, font_scale, (0, 0, 0), thickness, cv2.LINE_AA)


def _pixels(points: Sequence[Sequence[float]] | np.ndarray, scale: float) -> np.ndarray:
    return np.round(np.asarray(points, float).reshape(-1, 2) * scale).astype(np.int32)


def _positive(name: str, value: int) -> int:
    if value <= 0:
        raise ValueError(f"{name} {value}: must be positive")
    return value


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a BGR HxWx3 uint8 image, got {image.shape} {image.dtype}")
