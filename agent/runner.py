"""`edge-agent run`: sources -> one batched detector call -> per-stream trackers -> outbox.

Each tick takes the frames that are ready (one per stream at most; decoding runs on each
source's reader thread, beside inference), runs the detector once on the frames due for
detection (every `detect_interval`-th frame of a stream, see adaptive.schedule), and hands
each stream's tracker its detections, or nothing so that it predicts. Records are committed
to the outbox in groups (`COMMIT_EVERY_S`); the link thread publishes what is committed.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from adaptive.schedule import FrameScheduler, MotionGate
from models.base import Detector

from .bytetrack import ByteTrack
from .errors import ConfigError, ControllerUnreachable
from .health import HealthMonitor
from .link import Link
from .outbox import Outbox, OutboxObject, OutboxRecord
from .sources import Frame, Source

logger = logging.getLogger(__name__)

COMMIT_EVERY_S = 0.1
"""Records are committed (one transaction, one fsync) about this long after their frame was
processed, not one fsync per frame: an fsync costs a millisecond or more (far more on SD cards),
taken from the detector's time. A frame counts as produced, and can be sent, only once it is
committed, so a crash loses at most the uncommitted group, which nobody has seen yet."""


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
    """One source with its own tracker, schedule and frame count."""

    def __init__(self, stream_id: str, spec: str, factory: Callable[[str], Source], tracker: ByteTrack,
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
                 profile: dict, plan: dict, tracker_factory: Callable[[], ByteTrack] = ByteTrack):
        """`tracker_factory()` makes each stream's own tracker (track ids count per stream);
        e.g. `functools.partial(ByteTrack, ByteTrackConfig(lost_track_buffer=60))`."""
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
        self._uncommitted: list[OutboxRecord] = []
        self._last_commit = time.monotonic()
        self.frames = self.detections = 0
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
        try:
            while not self.stop_event.is_set() and not all(s.done for s in self.streams):
                if self.link.fatal is not None:
                    raise self.link.fatal
                ready = self._gather()
                if ready:
                    self._uncommitted += self._process(ready)
                if self._uncommitted and time.monotonic() - self._last_commit >= COMMIT_EVERY_S:
                    self._commit()
            self._commit()
            seconds = time.monotonic() - t0
            left = self._drain()
        finally:
            for stream in self.streams:
                stream.source.stop()
            self.link.stop()
            self.outbox.close()
        if self.link.fatal is not None:
            raise self.link.fatal
        return RunResult(self.frames, self.detections, seconds, left, self.health.sample()["inference_ms_p50"])

    def _commit(self) -> None:
        """Make the pending records durable; only now do they count as produced."""
        self._last_commit = time.monotonic()
        if not self._uncommitted:
            return
        records, self._uncommitted = self._uncommitted, []
        self.outbox.append_many(records)
        self.frames += len(records)
        self.detections += sum(len(r.objects) for r in records)
        self._outbox_depth += len(records)
        if self.frames % 50 < len(records):
            self._outbox_depth = self.outbox.depth()

    def _gather(self) -> list[tuple[Stream, Frame]]:
        """At most one frame per active stream. When none is ready, waits (up to 10 ms) on the
        first active stream, so a frame is picked up the moment its reader has decoded it."""
        ready = []
        for stream in self.streams:
            frame = self._next_frame(stream, timeout=0)
            if frame is not None:
                ready.append((stream, frame))
        if not ready:
            waiting = next((s for s in self.streams if not s.done), None)
            frame = self._next_frame(waiting, timeout=0.01) if waiting else None
            if frame is not None:
                ready.append((waiting, frame))
        return ready

    def _next_frame(self, stream: Stream, timeout: float) -> Frame | None:
        if stream.done:
            return None
        try:
            frame = stream.source.read(timeout=timeout)
        except TimeoutError:
            return None
        if frame is None:  # the source ended
            if self.options.loop and not stream.source.live:
                stream.restart()
            else:
                stream.done = True
            return None
        stream.frames += 1
        if self.options.max_frames and stream.frames >= self.options.max_frames:
            stream.done = True
        return frame

    def _process(self, ready: list[tuple[Stream, Frame]]) -> list[OutboxRecord]:
        due = []
        for stream, frame in ready:
            if stream.scheduler.should_detect(frame.image):
                stream.scheduler.detected(frame.image)
                due.append((stream, frame))
            else:
                stream.scheduler.skipped()
        detections = {}
        if due:
            batch = self.detector.detect_batch([frame.image for _, frame in due])
            self.health.record_inference(float(getattr(self.detector, "last_inference_ms", 0.0)))
            detections = {id(stream): dets for (stream, _), dets in zip(due, batch)}
        records = []
        names = self.detector.names
        now = time.time()
        for stream, frame in ready:
            # detections, or None: the tracker predicts this frame's boxes (rows marked predicted)
            dets, predicted = stream.tracker.step(detections.get(id(stream)))
            labels = dets.labels(names)
            records.append(OutboxRecord(
                stream_id=stream.stream_id, frame_index=frame.index, capture_time=frame.capture_time,
                objects=[
                    OutboxObject(t, c, label, s, tuple(box), p)
                    for t, c, label, s, box, p in zip(dets.tracker_id.tolist(), dets.class_id.tolist(), labels,
                                                      dets.confidence.tolist(), dets.xyxy.tolist(),
                                                      predicted.tolist())
                ],
            ))
            self.health.record_frame((now - frame.capture_time) * 1000, labels, detected=id(stream) in detections)
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
