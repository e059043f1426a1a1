"""Frame-skip policy: should this frame of a stream go to the detector?

Two knobs, both cheap enough to run on every frame of a Raspberry Pi:
- `detect_interval`: detect on every Nth frame, let the tracker predict in between;
- an optional motion gate: on a static scene, skip detection until enough pixels change
  (mean absolute difference of a small grayscale thumbnail against the last detected frame),
  but never for longer than `max_interval` frames, so stationary objects are refreshed.
Pure computation on the frames it is given; no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class MotionGate:
    threshold: float = 2.0
    """Mean absolute difference (0..255) on the thumbnail that counts as motion. Raising it skips
    more frames on quiet scenes (less CPU); too high and slow or small movers are detected late."""
    thumbnail: tuple[int, int] = (64, 36)

    def __post_init__(self) -> None:
        if self.threshold < 0:
            raise ValueError(f"motion threshold must be >= 0, got {self.threshold}")
        self._reference: np.ndarray | None = None

    def _thumb(self, image: np.ndarray) -> np.ndarray:
        small = cv2.resize(image, self.thumbnail, interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.int16)

    def changed(self, image: np.ndarray) -> bool:
        if self._reference is None:
            return True
        return float(np.abs(self._thumb(image) - self._reference).mean()) >= self.threshold

    def remember(self, image: np.ndarray) -> None:
        self._reference = self._thumb(image)


@dataclass
class FrameScheduler:
    detect_interval: int = 1
    """Detect every Nth frame. Higher: proportionally less detector time, boxes lag on fast motion."""
    motion_gate: MotionGate | None = None
    max_interval: int = 30
    """With a motion gate, detect at least every this many frames even on a static scene."""

    def __post_init__(self) -> None:
        if self.detect_interval < 1:
            raise ValueError(f"detect_interval must be >= 1, got {self.detect_interval}")
        if self.max_interval < self.detect_interval:
            raise ValueError(f"max_interval ({self.max_interval}) must be >= detect_interval ({self.detect_interval})")
        self._since: int | None = None  # frames since the last detection; None before the first

    def should_detect(self, image: np.ndarray) -> bool:
        """Decide for the next frame; call `detected(image)` when it was detected."""
        if self._since is None or self._since + 1 >= self.max_interval:
            return True
        if self._since + 1 < self.detect_interval:
            return False
        return self.motion_gate is None or self.motion_gate.changed(image)

    def decide(self, image: np.ndarray) -> bool:
        """`should_detect(image)`, with the decision recorded (`detected` or `skipped`)."""
        if self.should_detect(image):
            self.detected(image)
            return True
        self.skipped()
        return False

    def set_interval(self, interval: int) -> None:
        """Detect every `interval`-th frame from now on (`max_interval` grows to it if need be)."""
        if interval < 1:
            raise ValueError(f"detect_interval must be >= 1, got {interval}")
        self.detect_interval, self.max_interval = interval, max(self.max_interval, interval)

    def detected(self, image: np.ndarray) -> None:
        self._since = 0
        if self.motion_gate is not None:
            self.motion_gate.remember(image)

    def skipped(self) -> None:
        self._since = (self._since or 0) + 1
