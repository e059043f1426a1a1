"""`edge-agent run`: source -> detector -> tracker -> outbox, with the link beside it."""
from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from models.base import Detector

from .errors import ControllerUnreachable
from .health import HealthMonitor
from .link import Link
from .outbox import Outbox, OutboxObject, OutboxRecord
from .sources import Source
from .tracker import IoUTracker

logger = logging.getLogger(__name__)


@dataclass
class RunOptions:
    controller: str
    source: str
    state_dir: Path
    enroll_key: str | None = None
    name: str = ""
    stream_id: str = "cam0"
    max_frames: int = 0          # 0: until the source ends
    loop: bool = False           # restart a file source at its end (demo)
    drain_timeout_s: float = 30.0
    backoff_max_s: float = 10.0


@dataclass
class RunResult:
    frames: int
    detections: int
    seconds: float
    outbox_left: int
    inference_ms_p50: float

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


class Agent:
    def __init__(self, options: RunOptions, detector: Detector, source_factory, profile: dict, plan: dict):
        self.options = options
        self.detector = detector
        self._source_factory = source_factory
        self.profile = profile
        self.plan = plan
        self.health = HealthMonitor()
        self.tracker = IoUTracker()
        self.stop_event = threading.Event()
        options.state_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(options.state_dir / "outbox.db")
        self.source: Source | None = None
        self.started = time.time()
        self.link = Link(
            controller=options.controller,
            state_dir=options.state_dir,
            outbox_path=options.state_dir / "outbox.db",
            enroll_key=options.enroll_key,
            name=options.name or socket.gethostname(),
            hello=self._hello,
            health=self._health,
            backoff_max_s=options.backoff_max_s,
        )

    def _hello(self) -> dict:
        return {"profile": self.profile, "plan": self.plan, "streams": [self.options.stream_id],
                "started": self.started}

    def _health(self) -> dict:
        dropped = self.source.frames_dropped if self.source else 0
        sample = self.health.sample(frames_dropped=dropped, outbox_depth=self._outbox_depth)
        sample["streams"] = [{
            "stream_id": self.options.stream_id, "source": self.options.source,
            "state": "running" if not self.stop_event.is_set() else "ended",
            "fps": sample["fps"], "frames": sample["frames_total"], "dropped": dropped,
        }]
        return sample

    _outbox_depth = 0

    def run(self) -> RunResult:
        self.source = self._source_factory(self.options.source)
        self.source.start()  # raises SourceError before anything else starts
        self.link.start()
        t0 = time.monotonic()
        frames = detections = 0
        inference = []
        try:
            while not self.stop_event.is_set():
                if self.link.fatal is not None:
                    raise self.link.fatal
                if self.options.max_frames and frames >= self.options.max_frames:
                    break
                try:
                    frame = self.source.read(timeout=1.0)
                except TimeoutError:
                    continue
                if frame is None:
                    if self.options.loop and not self.source.live:
                        self.source.stop()
                        self.source = self._source_factory(self.options.source)
                        self.source.start()
                        continue
                    break
                dets = self.tracker.update(self.detector.detect(frame.image))
                names = self.detector.names
                labels = [names[c] if 0 <= c < len(names) else str(c) for c in dets.class_id.tolist()]
                record = OutboxRecord(
                    stream_id=self.options.stream_id, frame_index=frame.index, capture_time=frame.capture_time,
                    objects=[
                        OutboxObject(int(t), int(c), lbl, float(s), tuple(float(v) for v in box))
                        for t, c, lbl, s, box in zip(
                            dets.tracker_id.tolist(), dets.class_id.tolist(), labels,
                            dets.confidence.tolist(), dets.xyxy.tolist(),
                        )
                    ],
                )
                self.outbox.append(record)  # durable before it counts as produced
                self._outbox_depth = self.outbox.depth() if frames % 10 == 0 else self._outbox_depth + 1
                inference_ms = float(getattr(self.detector, "last_inference_ms", 0.0))
                inference.append(inference_ms)
                self.health.record_frame(inference_ms, (time.time() - frame.capture_time) * 1000, labels)
                frames += 1
                detections += len(dets)
            seconds = time.monotonic() - t0
            left = self._drain()
        finally:
            self.source.stop()
            self.link.stop()
            self.outbox.close()
        if self.link.fatal is not None:
            raise self.link.fatal
        inference.sort()
        return RunResult(frames, detections, seconds, left, inference[len(inference) // 2] if inference else 0.0)

    def _drain(self) -> int:
        """Wait for the controller to acknowledge everything, up to the drain timeout."""
        deadline = time.monotonic() + self.options.drain_timeout_s
        left = self.outbox.depth()
        while left and time.monotonic() < deadline and self.link.fatal is None:
            time.sleep(0.05)
            left = self.outbox.depth()
        self._outbox_depth = left
        if left and self.link.fatal is None:
            raise ControllerUnreachable(
                f"controller {self.options.controller} did not acknowledge {left} record(s) within "
                f"{self.options.drain_timeout_s:.0f}s ({self.link.last_error or 'no answer'}); they stay in "
                f"{self.options.state_dir / 'outbox.db'} and are sent on the next run"
            )
        return left
