"""A stream's latest frame and what the loop made of it, for CaptureFrame and snapshots to draw.

The loop replaces each stream's `LatestFrame` on every tick (a reference, no copy: sources hand
over a new array per frame), so reading one from another thread is safe and cheap.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LatestFrame:
    stream_id: str
    frame_index: int
    capture_time: float  # unix seconds
    image: np.ndarray    # BGR, source pixels
    xyxy: np.ndarray     # (n, 4) tracked boxes, source pixels
    track_ids: np.ndarray  # (n,)
    labels: list[str]
    scores: np.ndarray   # (n,)
