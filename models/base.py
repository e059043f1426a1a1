"""The detector interface every backend implements."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from .detections import Detections


class Detector(ABC):
    """Frames in (BGR, any size), `Detections` out with boxes in source pixels.

    Backends warm up in their constructor so the first real frame is not the slow one.
    """

    names: list[str]
    input_size: tuple[int, int]  # (width, height) of the network input
    confidence_threshold: float
    """Minimum score kept. Higher: fewer false positives, more missed objects."""
    iou_threshold: float
    """Overlap above which NMS drops the weaker box of a class. Higher: more duplicates survive."""
    last_inference_ms: float = 0.0
    """Time of the last raw inference call (the backend's run, without pre/post-processing)."""

    def detect(self, frame_bgr: np.ndarray) -> Detections:
        return self.detect_batch([frame_bgr])[0]

    @abstractmethod
    def detect_batch(self, frames: list[np.ndarray]) -> list[Detections]:
        """One inference call for all frames (e.g. one per stream)."""

    def close(self) -> None:
        """Release the backend's resources."""
