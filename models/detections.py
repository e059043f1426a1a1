"""`Detections`: the columnar container every stage passes along (supervision's design)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Detections:
    """Boxes of one frame as numpy columns.

    xyxy: (n, 4) float32 box corners in pixels; confidence: (n,) float32; class_id: (n,) int32;
    tracker_id: (n,) int64 or None before tracking.
    """

    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray
    tracker_id: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, dtype=np.float32)
        if self.xyxy.size == 0:
            self.xyxy = self.xyxy.reshape(0, 4)
        if self.xyxy.ndim != 2 or self.xyxy.shape[1] != 4:
            raise ValueError(f"xyxy must have shape (n, 4), got {self.xyxy.shape}")
        n = len(self.xyxy)
        self.confidence = self._column("confidence", self.confidence, np.float32, n)
        self.class_id = self._column("class_id", self.class_id, np.int32, n)
        if self.tracker_id is not None:
            self.tracker_id = self._column("tracker_id", self.tracker_id, np.int64, n)

    @staticmethod
    def _column(name: str, values, dtype, n: int) -> np.ndarray:
        arr = np.asarray(values, dtype=dtype)
        if arr.size == 0:
            arr = arr.reshape(0)
        if arr.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) to match xyxy, got {np.shape(values)}")
        return arr

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))

    @classmethod
    def merge(cls, parts: list[Detections]) -> Detections:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        tracked = [p.tracker_id is not None for p in parts]
        if any(tracked) and not all(tracked):
            raise ValueError("cannot merge tracked and untracked Detections")
        return cls(
            np.concatenate([p.xyxy for p in parts]),
            np.concatenate([p.confidence for p in parts]),
            np.concatenate([p.class_id for p in parts]),
            np.concatenate([p.tracker_id for p in parts]) if all(tracked) else None,
        )

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index) -> Detections:
        """Rows by boolean mask, integer array or slice: `dets[dets.confidence > 0.5]`."""
        if isinstance(index, (int, np.integer)):
            index = [index]
        return Detections(
            self.xyxy[index], self.confidence[index], self.class_id[index],
            None if self.tracker_id is None else self.tracker_id[index],
        )

    def labels(self, names: list[str]) -> list[str]:
        return [names[c] if 0 <= c < len(names) else str(c) for c in self.class_id.tolist()]
