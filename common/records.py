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


# ---- objects, counts, snapshots: the outbox's other records (proto: ObjectEvent, CountBatch, SnapshotRecord) ----

@dataclass
class TrackedObject:
    """One track over its life on one stream (agent.objects keeps it; the controller stores the newest
    state by `last_seen`). Times are unix seconds, boxes and points source pixels."""

    object_id: str
    stream_id: str
    track_id: int
    label: str
    class_id: int
    first_seen: float
    last_seen: float
    best_score: float
    best_box: tuple[float, float, float, float]
    path: list[tuple[float, float, float]] = field(default_factory=list)  # (x, y, time)
    zones: list[str] = field(default_factory=list)
    crossings: list[tuple[str, str, float]] = field(default_factory=list)  # (line, direction, time)
    frames: int = 0
    ended: bool = False
    has_snapshot: bool = False
    device_id: str = ""


@dataclass
class ObjectEventRecord:
    """`type` "new", "update" or "end", and the object's state then."""

    type: str
    object: TrackedObject
    sequence: int = 0

    @property
    def stream_id(self) -> str:
        return self.object.stream_id

    @property
    def capture_time(self) -> float:
        return self.object.last_seen


@dataclass(frozen=True)
class CountRow:
    """Events of one minute: `minute` is its start (epoch seconds, a multiple of 60); `kind` zone
    (direction "enter") or line (direction "in"/"out")."""
    stream: str
    minute: int
    kind: str
    name: str
    label: str
    direction: str
    count: int


@dataclass
class CountRecord:
    """Counts since the agent's previous CountRecord; the controller adds them up."""

    rows: list[CountRow]
    sequence: int = 0
    device_id: str = ""

    @property
    def stream_id(self) -> str:
        return self.rows[0].stream if self.rows else ""

    @property
    def capture_time(self) -> float:
        return float(max(r.minute for r in self.rows)) if self.rows else 0.0


@dataclass
class SnapshotRecord:
    """A JPEG: an object's best crop ("crop"), its annotated downscaled frame ("frame"), or a stream's
    latest annotated frame ("live", answered to CaptureFrame, never in the outbox)."""

    stream_id: str
    object_id: str
    kind: str
    label: str
    capture_time: float
    jpeg: bytes
    score: float = 0.0
    sequence: int = 0
    device_id: str = ""


Record = FrameRecord | ObjectEventRecord | CountRecord | SnapshotRecord
"""Anything the outbox holds and PublishDetections carries, each with its own sequence."""
