"""Health counters shared by the pipeline (writer) and the link (reader), and the sample they make."""
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


@dataclass(frozen=True)
class HealthSample:
    """What the agent measured over the last health window, and its running totals
    (edgefleet.v1.HealthSample, sent with each heartbeat; agent.convert)."""
    frames_total: int = 0
    detections_total: int = 0
    frames_dropped: int = 0
    """Frames the sources (and served streams) dropped because the loop was behind, since start."""
    outbox_depth: int = 0
    """Committed records not yet acknowledged."""
    fps: float = 0.0
    """Frames processed per second, all streams."""
    detect_fps: float = 0.0
    inference_ms_p50: float = 0.0
    inference_ms_p95: float = 0.0
    latency_ms_p95: float = 0.0
    """Capture to outbox."""
    temperature_c: float = 0.0
    """The hottest thermal zone; 0 when unknown (read with --auto-plan only)."""
    outbox_dropped: int = 0
    """Records the bounded outbox dropped (oldest first), in every run of this device."""
    streams: tuple[StreamHealth, ...] = ()


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

    def sample(self, frames_dropped: int = 0, outbox_depth: int = 0) -> HealthSample:
        """The window's rates and percentiles and the totals (the caller adds what it counts itself)."""
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            frames, inference = list(self._frames), [ms for _, ms in self._inference]
            frames_total, detections_total = self.frames_total, self.detections_total
        fps = detect_fps = latency_p95 = p50 = p95 = 0.0
        if len(frames) >= 2:
            span = max(frames[-1][0] - frames[0][0], 1e-6)
            fps = (len(frames) - 1) / span
            detect_fps = sum(1 for f in frames[1:] if f[2]) / span
            latency_p95 = float(np.percentile([f[1] for f in frames], 95))
        if inference:
            p50, p95 = float(np.percentile(inference, 50)), float(np.percentile(inference, 95))
        return HealthSample(frames_total=frames_total, detections_total=detections_total,
                            frames_dropped=frames_dropped, outbox_depth=outbox_depth, fps=fps, detect_fps=detect_fps,
                            inference_ms_p50=p50, inference_ms_p95=p95, latency_ms_p95=latency_p95)
