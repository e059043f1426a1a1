"""`Detections`: the columnar container every stage passes along (supervision's design)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(eq=False)
class Detections:
    """The boxes of one frame as numpy columns, one row per object.

    xyxy: (n, 4) float32 box corners (x1, y1, x2, y2) in source-frame pixels;
    confidence: (n,) float32; class_id: (n,) int32; tracker_id: (n,) int64, or None before tracking.
    Dtypes are coerced, shapes checked. Select rows with a boolean mask, an index array or a
    slice (`dets[dets.confidence > 0.5]`); there is no need to iterate row by row.
    """

    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray
    tracker_id: np.ndarray | None = None

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, dtype=np.float32)
        if xyxy.size == 0:
            xyxy = xyxy.reshape(0, 4)
        if xyxy.ndim != 2 or xyxy.shape[1] != 4:
            raise ValueError(f"Detections.xyxy must have shape (n, 4), got {np.shape(self.xyxy)}")
        self.xyxy = xyxy
        n = len(xyxy)
        self.confidence = _column("confidence", self.confidence, np.float32, n)
        self.class_id = _column("class_id", self.class_id, np.int32, n)
        if self.tracker_id is not None:
            self.tracker_id = _column("tracker_id", self.tracker_id, np.int64, n)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))

    @classmethod
    def merge(cls, parts: list[Detections]) -> Detections:
        """Concatenate rows; all parts must be tracked, or none (empty parts do not count)."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        tracked = [p.tracker_id is not None for p in parts]
        if any(tracked) and not all(tracked):
            raise ValueError(
                "cannot merge tracked and untracked Detections (tracker_id set on some parts only)")
        return cls(
            np.concatenate([p.xyxy for p in parts]),
            np.concatenate([p.confidence for p in parts]),
            np.concatenate([p.class_id for p in parts]),
            np.concatenate([p.tracker_id for p in parts]) if all(tracked) else None,
        )

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index) -> Detections:
        """Rows by boolean mask, integer array, slice or single int (a one-row Detections)."""
        if isinstance(index, (int, np.integer)):
            index = [index]
        return Detections(
            self.xyxy[index], self.confidence[index], self.class_id[index],
            None if self.tracker_id is None else self.tracker_id[index],
        )

    def labels(self, names: list[str]) -> list[str]:
        """Class names per row; an id outside `names` gives its number as text."""
        return [names[c] if 0 <= c < len(names) else str(c) for c in self.class_id.tolist()]

    def __repr__(self) -> str:
        tracked = "" if self.tracker_id is None else ", tracked"
        return f"Detections(n={len(self)}{tracked})"


def _column(name: str, values, dtype, n: int) -> np.ndarray:
    arr = np.asarray(values, dtype=dtype)
    if arr.size == 0 and n == 0:
        arr = arr.reshape(0)
    if arr.shape != (n,):
        raise ValueError(f"Detections.{name} must have shape ({n},) to match xyxy, got {np.shape(values)}")
    return arr
