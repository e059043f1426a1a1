"""Health counters shared by the pipeline (writer) and the link (reader)."""
from __future__ import annotations

import collections
import threading
import time

import numpy as np


class HealthMonitor:
    """Rolling fps and latency percentiles over the last `window_s` seconds."""

    def __init__(self, window_s: float = 10.0):
        self.window_s = window_s
        self._lock = threading.Lock()
        self._frames: collections.deque[tuple[float, float, float]] = collections.deque()
        self.started = time.time()
        self.frames_total = 0
        self.detections_total = 0
        self.labels: collections.Counter[str] = collections.Counter()

    def record_frame(self, inference_ms: float, latency_ms: float, labels: list[str]) -> None:
        now = time.monotonic()
        with self._lock:
            self._frames.append((now, inference_ms, latency_ms))
            self.frames_total += 1
            self.detections_total += len(labels)
            self.labels.update(labels)
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._frames and now - self._frames[0][0] > self.window_s:
            self._frames.popleft()

    def sample(self, frames_dropped: int = 0, outbox_depth: int = 0) -> dict:
        """A health sample as plain data (field names follow edgefleet.v1.HealthSample)."""
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            window = list(self._frames)
            frames_total, detections_total = self.frames_total, self.detections_total
        sample = {
            "frames_total": frames_total, "detections_total": detections_total,
            "frames_dropped": frames_dropped, "outbox_depth": outbox_depth,
            "fps": 0.0, "detect_fps": 0.0, "inference_ms_p50": 0.0, "inference_ms_p95": 0.0,
            "latency_ms_p95": 0.0,
        }
        if len(window) >= 2:
            span = max(window[-1][0] - window[0][0], 1e-6)
            arr = np.array([(inf, lat) for _, inf, lat in window], dtype=np.float64)
            fps = (len(window) - 1) / span
            sample.update(
                fps=fps, detect_fps=fps,
                inference_ms_p50=float(np.percentile(arr[:, 0], 50)),
                inference_ms_p95=float(np.percentile(arr[:, 0], 95)),
                latency_ms_p95=float(np.percentile(arr[:, 1], 95)),
            )
        return sample
