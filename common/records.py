"""A frame's detections as a record: what the agent's outbox keeps and sends, and what the controller stores.

Both sides keep each object as the same JSON row, `[track_id, class_id, label, score, [x1, y1, x2, y2],
predicted]`, with the score rounded to 5 decimals and the box to 2 (`object_row`), and read it back
with `objects_from_json`. The conversion to and from the wire is `edgefleet.common.convert`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from edgefleet.models.detections import Detections


@dataclass
class ObjectRecord:
    track_id: int
    class_id: int
    label: str
    score: float
    xyxy: tuple[float, float, float, float]  # source pixels
    predicted: bool = False
    """The tracker's prediction on a frame the detector skipped, not a detection."""


@dataclass
class FrameRecord:
    """One frame of one stream. `sequence` counts per device from 1 (0: not yet in the agent's outbox,
    which assigns it); `device_id` is empty on the agent, which is the device."""

    stream_id: str
    sequence: int
    frame_index: int
    capture_time: float  # unix seconds
    objects: list[ObjectRecord] = field(default_factory=list)
    device_id: str = ""

    @classmethod
    def of_frame(cls, stream_id: str, frame_index: int, capture_time: float, dets: Detections,
                 labels: list[str], predicted: np.ndarray) -> FrameRecord:
        """A frame's tracked detections (`labels` and the boolean `predicted` column by row), sequence 0."""
        if dets.tracker_id is None:
            raise ValueError("FrameRecord.of_frame needs tracked detections (tracker_id is None)")
        return cls(stream_id, 0, frame_index, capture_time, [
            ObjectRecord(t, c, label, s, tuple(box), p)
            for t, c, label, s, box, p in zip(dets.tracker_id.tolist(), dets.class_id.tolist(), labels,
                                              dets.confidence.tolist(), dets.xyxy.tolist(), predicted.tolist())
        ])


def object_row(obj: ObjectRecord) -> list:
    """The object as its stored JSON row, score and box rounded."""
    return [obj.track_id, obj.class_id, obj.label, round(obj.score, 5),
            [round(v, 2) for v in obj.xyxy], int(obj.predicted)]


def objects_from_json(text: str) -> list[ObjectRecord]:
    """The objects of a stored row (a JSON list of `object_row`s)."""
    return [ObjectRecord(t, c, label, s, tuple(box), bool(p)) for t, c, label, s, box, p in json.loads(text)]
