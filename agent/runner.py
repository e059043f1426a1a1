"""`edge-agent run`: sources -> one batched detector call -> per-stream trackers -> outbox.

Each tick takes the frames that are ready (one per stream at most), runs the detector once
on the frames due for detection (every `detect_interval`-th frame of a stream), lets the
other streams' trackers predict, and commits every frame's record to the outbox in one
transaction. The link thread publishes the outbox beside this loop.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from adaptive.schedule import FrameScheduler, MotionGate
from models.base import Detector
from models.detections import Detections

from .errors import ConfigError, ControllerUnreachable
from .health import HealthMonitor
from .link import Link
from .outbox import Outbox, OutboxObject, OutboxRecord
from .sources import Frame, Source
from .tracker import IoUTracker

logger = logging.getLogger(__name__)


@dataclass
class RunOptions:
    controller: str
    sources: list[str]
    state_dir: Path
    enroll_key: str | None = None
    name: str = ""
    stream_ids: list[str] = field(default_factory=list)  # default cam0, cam1, ...
    max_frames: int = 0          # per stream; 0: until the source ends
    loop: bool = False           # restart a finite source at its end (demo)
    detect_interval: int = 1     # detect every Nth frame of a stream, track in between
    motion_threshold: float = 0  # >0: skip detection on static scenes (see adaptive.schedule)
    drain_timeout_s: float = 30.0
    backoff_max_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.sources:
            raise ConfigError("at least one --source is needed")
        if not self.stream_ids:
            self.stream_ids = [f"cam{i}" for i in range(len(self.sources))]
        if len(self.stream_ids) != len(self.sources):
            raise ConfigError(f"{len(self.stream_ids)} --stream-id for {len(self.sources)} --source; give one each")
        if len(set(self.stream_ids)) != len(self.stream_ids):
            raise ConfigError(f"--stream-id values must be unique, got {self.stream_ids}")
        if self.detect_interval < 1:
            raise ConfigError(f"--detect-interval must be >= 1, got {self.detect_interval}")
        if self.motion_threshold < 0:
            raise ConfigError(f"--motion-gate must be >= 0, got {self.motion_threshold}")
        if self.max_frames < 0:
            raise ConfigError(f"--max-frames must be >= 0, got {self.max_frames}")


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


class Stream:
    """One source with its own tracker and frame count."""

    def __init__(self, stream_id: str, spec: str, factory: Callable[[str], Source], tracker,
                 scheduler: FrameScheduler):
        self.stream_id, self.spec, self._factory = stream_id, spec, factory
        self.tracker = tracker
        self.scheduler = scheduler
        self.source = factory(spec)
        self.frames = 0
        self.done = False

    def restart(self) -> None:
        self.source.stop()
        self.source = self._factory(self.spec)
        self.source.start()


class Agent:
    def __init__(self, options: RunOptions, detector: Detector, source_factory: Callable[[str], Source],
                 profile: dict, plan: dict, tracker_factory=IoUTracker):
        self.options = options
        self.detector = detector
        self.profile = profile
        self.plan = plan
        self.health = HealthMonitor()
        self.stop_event = threading.Event()
        self.streams = [Stream(sid, spec, source_factory, tracker_factory(), self._scheduler())
                        for sid, spec in zip(options.stream_ids, options.sources)]
        options.state_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(options.state_dir / "outbox.db")
        self._outbox_depth = 0
        self.started = time.time()
        self.link = Link(
            controller=options.controller, state_dir=options.state_dir,
            outbox_path=options.state_dir / "outbox.db", enroll_key=options.enroll_key,
            name=options.name or socket.gethostname(), hello=self._hello, health=self._health,
            backoff_max_s=options.backoff_max_s,
        )

    def _scheduler(self) -> FrameScheduler:
        gate = MotionGate(self.options.motion_threshold) if self.options.motion_threshold else None
        interval = self.options.detect_interval
        return FrameScheduler(interval, gate, max_interval=max(30, interval))

    def _hello(self) -> dict:
        return {"profile": self.profile, "plan": self.plan, "streams": [s.stream_id for s in self.streams],
                "started": self.started}

    def _health(self) -> dict:
        dropped = sum(s.source.frames_dropped for s in self.streams)
        sample = self.health.sample(frames_dropped=dropped, outbox_depth=self._outbox_depth)
        sample["streams"] = [
            {"stream_id": s.stream_id, "source": s.spec, "state": "ended" if s.done else s.source.state,
             "frames": s.frames, "dropped": s.source.frames_dropped, "error": s.source.error or ""}
            for s in self.streams
        ]
        return sample

    # ---- the loop ----

    def run(self) -> RunResult:
        for stream in self.streams:
            stream.source.start()  # raises SourceError before anything else starts
        self.link.start()
        t0 = time.monotonic()
        frames = detections = 0
        try:
            while not self.stop_event.is_set() and not all(s.done for s in self.streams):
                if self.link.fatal is not None:
                    raise self.link.fatal
                ready = self._gather()
                if not ready:
                    continue
                records = self._process(ready)
                self.outbox.append_many(records)  # durable before it counts as produced
                self._outbox_depth += len(records)
                frames += len(records)
                detections += sum(len(r.objects) for r in records)
                if frames % 50 < len(records):
                    self._outbox_depth = self.outbox.depth()
            seconds = time.monotonic() - t0
            left = self._drain()
        finally:
            for stream in self.streams:
                stream.source.stop()
            self.link.stop()
            self.outbox.close()
        if self.link.fatal is not None:
            raise self.link.fatal
        return RunResult(frames, detections, seconds, left, self.health.sample()["inference_ms_p50"])

    def _gather(self) -> list[tuple[Stream, Frame]]:
        """At most one frame per active stream; waits a little only when nothing is ready."""
        ready = []
        for stream in self.streams:
            if stream.done:
                continue
            try:
                frame = stream.source.read(timeout=0)
            except TimeoutError:
                continue
            if frame is None:
                if self.options.loop and not stream.source.live:
                    stream.restart()
                else:
                    stream.done = True
                continue
            ready.append((stream, frame))
            stream.frames += 1
            if self.options.max_frames and stream.frames >= self.options.max_frames:
                stream.done = True
        if not ready:
            time.sleep(0.002)
        return ready

    def _process(self, ready: list[tuple[Stream, Frame]]) -> list[OutboxRecord]:
        due = []
        for stream, frame in ready:
            if stream.scheduler.should_detect(frame.image):
                stream.scheduler.detected(frame.image)
                due.append((stream, frame))
            else:
                stream.scheduler.skipped()
        results: dict[int, tuple[Detections, bool]] = {}
        if due:
            batch = self.detector.detect_batch([f.image for _, f in due])
            self.health.record_inference(float(getattr(self.detector, "last_inference_ms", 0.0)))
            for (stream, _), dets in zip(due, batch):
                results[id(stream)] = (stream.tracker.update(dets), False)
        for stream, _ in ready:
            if id(stream) not in results:
                results[id(stream)] = (stream.tracker.predict_only(), True)
        records = []
        names = self.detector.names
        now = time.time()
        for stream, frame in ready:
            dets, predicted = results[id(stream)]
            labels = dets.labels(names)
            ids = dets.tracker_id if dets.tracker_id is not None else np.zeros(len(dets), np.int64)
            records.append(OutboxRecord(
                stream_id=stream.stream_id, frame_index=frame.index, capture_time=frame.capture_time,
                objects=[
                    OutboxObject(int(t), int(c), label, float(s), tuple(box), predicted)
                    for t, c, label, s, box in zip(ids.tolist(), dets.class_id.tolist(), labels,
                                                   dets.confidence.tolist(), dets.xyxy.tolist())
                ],
            ))
            self.health.record_frame((now - frame.capture_time) * 1000, labels, detected=not predicted)
        return records

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
