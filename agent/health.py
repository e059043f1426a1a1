"""Health counters shared by the pipeline (writer) and the link (reader)."""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StreamHealth:
    """One stream in a health sample (edgefleet.v1.StreamHealth), local or served."""
    stream_id: str
    source: str
    """The source as given (a local stream), or `grpc:<peer>` (a served one)."""
    state: str
    """"running", "reconnecting", "ended", "failed"."""
    frames: int
    dropped: int
    error: str = ""


class HealthMonitor:
    """Rolling rates and percentiles over the last `window_s` seconds, plus running totals."""

    def __init__(self, window_s: float = 10.0):
        self.window_s = window_s
        self._lock = threading.Lock()
        self._frames: collections.deque[tuple[float, float, bool]] = collections.deque()  # t, latency, detected
        self._inference: collections.deque[tuple[float, float]] = collections.deque()  # t, ms per call
        self.frames_total = 0
        self.detections_total = 0
        self.labels: collections.Counter[str] = collections.Counter()

    def record_inference(self, ms: float) -> None:
        with self._lock:
            self._inference.append((time.monotonic(), ms))

    def reset_inference(self) -> None:
        """Forget the inference latencies in the window (after the detector was replaced)."""
        with self._lock:
            self._inference.clear()

    def record_frame(self, latency_ms: float, labels: list[str], detected: bool = True) -> None:
        now = time.monotonic()
        with self._lock:
            self._frames.append((now, latency_ms, detected))
            self.frames_total += 1
            self.detections_total += len(labels)
            self.labels.update(labels)
            self._trim(now)

    def _trim(self, now: float) -> None:
        for window in (self._frames, self._inference):
            while window and now - window[0][0] > self.window_s:
                window.popleft()

    def sample(self, frames_dropped: int = 0, outbox_depth: int = 0) -> dict:
        """A health sample as plain data (field names follow edgefleet.v1.HealthSample)."""
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            frames, inference = list(self._frames), [ms for _, ms in self._inference]
            frames_total, detections_total = self.frames_total, self.detections_total
        sample = {
            "frames_total": frames_total, "detections_total": detections_total,
            "frames_dropped": frames_dropped, "outbox_depth": outbox_depth,
            "fps": 0.0, "detect_fps": 0.0, "inference_ms_p50": 0.0, "inference_ms_p95": 0.0,
            "latency_ms_p95": 0.0,
        }
        if len(frames) >= 2:
            span = max(frames[-1][0] - frames[0][0], 1e-6)
            sample["fps"] = (len(frames) - 1) / span
            sample["detect_fps"] = sum(1 for f in frames[1:] if f[2]) / span
            sample["latency_ms_p95"] = float(np.percentile([f[1] for f in frames], 95))
        if inference:
            sample["inference_ms_p50"] = float(np.percentile(inference, 50))
            sample["inference_ms_p95"] = float(np.percentile(inference, 95))
        return sample
