"""The frame loop: read, detect, track, record; nothing else runs on its thread between frames.

Each tick takes the frames that are ready (one per stream at most; decoding runs on each
source's reader thread, beside inference), runs the detector once on the frames due for
detection (every `detect_interval`-th frame of a stream, see adaptive.schedule), and hands
each stream's tracker its detections, or nothing so that it predicts. Each local stream's tracked
rows then go to its zones and lines (agent.analytics) and its objects (agent.objects), whose events
join the frames' records. The records go to the `Recorder` (agent.recorder), which hands them to
the outbox writer's thread in groups; each group also gets one `CountRecord` with the minute counts
since the previous group, so counts are as durable as frames. An ended object's snapshots are
encoded on their own thread (agent.snapshots); the loop takes them into the outbox each tick. With
file sources, the next tick's frames are letterboxed on a prepare thread while the current
inference runs (`FrameLoop._look_ahead`).

Served streams (`edge-agent serve`, agent.inference) are one more kind of stream: a `Feed`
whose frames are detected and tracked on its own batcher thread with the same detector
(`DetectorSlot`), and whose records the loop takes each tick. Local streams and feeds answer
the same questions (their health, their drops, a new detect interval).

Everything else (commands, deployments, the runtime controller, reporting) is the supervisor's
(agent.supervisor), between ticks.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edgefleet.adaptive.schedule import FrameScheduler, MotionGate
from edgefleet.common.records import CountRecord, Record
from edgefleet.models.base import Detector, Prepared
from edgefleet.models.detections import Detections

from .analytics import Analytics
from .bytetrack import ByteTrack
from .health import HealthMonitor, StreamHealth
from .latest import LatestFrame
from .objects import StreamObjects
from .options import RunOptions
from .outbox import OutboxRecord
from .recorder import Recorder
from .snapshots import Snapshots
from .sources import Frame, Source

GATHER_WAIT_S = 0.05
"""The loop's longest wait for a frame when no stream has one (any stream's frame ends it at once):
how often an idle loop still commits, applies commands and feeds the watchdog."""


class Feed(Protocol):
    """Streams that detect and track elsewhere (served streams): the loop takes their records."""

    def take_records(self) -> list[OutboxRecord]: ...

    def dropped_total(self) -> int: ...

    def stream_health(self) -> list[StreamHealth]: ...

    def set_detect_interval(self, interval: int) -> None: ...


@dataclass(frozen=True)
class FeedContext:
    """What a feed is made from: the agent's detector call (`detect`, one call at a time with the
    loop's) and class names, its health counters, its streams' schedules (`new_scheduler`, at the
    current detect interval), its publish threshold, and its local stream ids (not to be served)."""
    detect: Callable[[list[np.ndarray]], list]
    names: Callable[[], list[str]]
    health: HealthMonitor
    new_scheduler: Callable[[], FrameScheduler]
    publish_threshold: float
    local_stream_ids: frozenset[str]


class DetectorSlot:
    """The detector the loop and the feeds share: one call at a time, swapped between ticks."""

    def __init__(self, detector: Detector, health: HealthMonitor):
        self.detector = detector
        self.lock = threading.Lock()
        """Held around every detector call and swap: served batches run on another thread."""
        self._health = health

    def names(self) -> list[str]:
        return self.detector.names

    def detect_served(self, images: list[np.ndarray]) -> list:
        """A feed's batch (from its own thread) on the loop's detector, one call at a time with the loop's."""
        with self.lock:
            batch = self.detector.detect_batch(images)
            ms = float(getattr(self.detector, "last_inference_ms", 0.0))
        self._health.record_inference(ms)
        return batch

    def swap(self, detector: Detector) -> None:
        """Use `detector` from the next call on (between ticks; served batches wait on the lock), close the old one."""
        with self.lock:
            old, self.detector = self.detector, detector
            old.close()
        self._health.reset_inference()  # the latencies in the window were the old detector's


class Schedules:
    """The detect interval the streams run at now, and the scheduler of a new stream (local or served)."""

    def __init__(self, detect_interval: int, motion_gate: float):
        self.detect_interval = detect_interval
        self.motion_gate = motion_gate

    def new_scheduler(self) -> FrameScheduler:
        gate = MotionGate(self.motion_gate) if self.motion_gate else None
        return FrameScheduler(self.detect_interval, gate, max_interval=max(30, self.detect_interval))


class Stream:
    """One source with its own tracker, schedule and frame count."""

    def __init__(self, stream_id: str, spec: str, factory: Callable[[str], Source], tracker: ByteTrack,
                 scheduler: FrameScheduler, frame_ready: threading.Event):
        self.stream_id, self.spec, self._factory = stream_id, spec, factory
        self.frame_ready = frame_ready  # shared by the loop's streams: set when any has a frame
        self.tracker = tracker
        self.scheduler = scheduler
        self.source = factory(spec)
        self.frames = 0
        self.done = False

    def start(self) -> None:
        self.source.start(notify=self.frame_ready)

    def restart(self) -> None:
        self.source.stop()
        self.source = self._factory(self.spec)
        self.start()

    def health(self) -> StreamHealth:
        return StreamHealth(self.stream_id, self.spec, "ended" if self.done else self.source.state, self.frames,
                            self.source.frames_dropped, self.source.error or "")


@dataclass
class Ahead:
    """The next tick's frames, gathered while this tick's inference runs (FrameLoop._look_ahead): one
    per stream that had one ready, those due for detection, and their batch being prepared."""
    ready: list[tuple[Stream, Frame]]
    due: list[tuple[Stream, Frame]]
    prepared: Future[Prepared] | None


class FrameLoop:
    """The streams, the shared detector, the trackers and the records' way to the outbox.

    `observe(images, detections, inference_ms)` sees every detector call's frames and results
    (the engine manager's shadow test samples them)."""

    def __init__(self, options: RunOptions, slot: DetectorSlot, schedules: Schedules, health: HealthMonitor,
                 recorder: Recorder, source_factory: Callable[[str], Source], stop: threading.Event, *,
                 tracker_factory: Callable[[], ByteTrack] = ByteTrack, feeds: Sequence[Feed] = (),
                 observe: Callable[[list[np.ndarray], list, float], None] = lambda images, batch, ms: None):
        self.options, self.slot, self.schedules, self.health, self.recorder = options, slot, schedules, health, recorder
        self.stop = stop
        self.feeds = list(feeds)
        self._observe = observe
        self._frame_ready = threading.Event()
        self.streams = [Stream(sid, spec, source_factory, tracker_factory(), schedules.new_scheduler(),
                               self._frame_ready) for sid, spec in zip(options.stream_ids, options.sources)]
        self._preparer: ThreadPoolExecutor | None = None
        self._ahead: Ahead | None = None
        self.analytics = Analytics(options.analytics)
        """The local streams' zones and lines (agent.analytics), evaluated on each tracked frame."""
        evaluators = self.analytics.evaluators
        enabled = options.objects.enabled
        self.snapshots = (Snapshots(options.snapshots, {sid: e.setting for sid, e in evaluators.items()})
                          if enabled and options.snapshots.enabled else None)
        """The ended objects' snapshots (agent.snapshots), encoded on their own thread."""
        self.objects = {s.stream_id: StreamObjects(s.stream_id, options.objects, snapshots=self.snapshots)
                        for s in self.streams if enabled}
        """Each local stream's tracked objects (agent.objects), after its zones and lines."""
        self.latest: dict[str, LatestFrame] = {}
        """Each local stream's latest frame and its tracked boxes (agent.latest), replaced every tick, for
        CaptureFrame; read from any thread."""

    def start(self) -> None:
        """Start the sources (a SourceError before anything else starts) and, for files, the prepare thread."""
        for stream in self.streams:
            stream.start()
        if self.snapshots is not None:
            self.snapshots.start()
        if not any(stream.source.live for stream in self.streams):
            self._preparer = ThreadPoolExecutor(1, thread_name_prefix="prepare")  # see _look_ahead

    def close(self) -> None:
        """Stop the sources and threads. Objects still live end here and, with the counts not yet taken,
        go to the recorder: a loop replaced by a restarted one (new sources or settings) loses none
        (after `finish` there are none left)."""
        for stream in self.streams:
            stream.source.stop()
        if self._preparer is not None:
            self._preparer.shutdown()
        self._hand_over(drain_s=2.0)
        if self.snapshots is not None:
            self.snapshots.close()

    def running(self) -> bool:
        """Until stopped; with feeds, until then only; else until every stream ended."""
        return not self.stop.is_set() and (bool(self.feeds) or self._ahead is not None
                                           or not all(s.done for s in self.streams))

    def tick(self) -> None:
        """One turn: the ready frames detected, tracked and recorded, the feeds' records taken, a commit when due."""
        ahead, self._ahead = self._ahead, None
        ready = ahead.ready if ahead is not None else self._gather()
        if ready:
            self.recorder.add(self._process(ready, ahead))
        for feed in self.feeds:
            self.recorder.add(feed.take_records())
        if self.snapshots is not None:
            self.recorder.add(self.snapshots.take())
        if self.recorder.due():
            self.recorder.add(self._counts())
            self.recorder.commit_if_due()

    def finish(self) -> None:
        """After the last tick: the feeds' last records, every live object ended (and its snapshots
        encoded), the counts, and everything committed."""
        for feed in self.feeds:
            self.recorder.add(feed.take_records())
        self._hand_over(drain_s=10.0)
        self.recorder.commit()
        self.recorder.flush()

    def _hand_over(self, drain_s: float) -> None:
        """Every live object ended, its snapshots encoded (waiting up to `drain_s`), and the counts, to the recorder."""
        for objects in self.objects.values():
            self.recorder.add(objects.end_all())
        if self.snapshots is not None:
            self.snapshots.drain(drain_s)
            self.recorder.add(self.snapshots.take())
        self.recorder.add(self._counts())

    def _counts(self) -> list[CountRecord]:
        """The minute counts since the last take, as one record (none when there are none)."""
        rows = self.analytics.counts.take(None)
        return [CountRecord(rows)] if rows else []

    def set_detect_interval(self, interval: int) -> None:
        """Every stream, local and served, detects every `interval`-th frame from now on (and new ones too)."""
        self.schedules.detect_interval = interval
        for stream in self.streams:
            stream.scheduler.set_interval(interval)
        for feed in self.feeds:
            feed.set_detect_interval(interval)

    def stream_health(self) -> list[StreamHealth]:
        return [s.health() for s in self.streams] + [h for feed in self.feeds for h in feed.stream_health()]

    def dropped_total(self) -> int:
        return sum(s.source.frames_dropped for s in self.streams) + sum(f.dropped_total() for f in self.feeds)

    # ---- frames ----

    def _gather(self) -> list[tuple[Stream, Frame]]:
        """At most one frame per active stream. When none is ready, waits until any stream has
        one (up to `GATHER_WAIT_S`), so a frame is picked up the moment its reader has decoded
        it; with no stream left (serving), waits a commit period."""
        self._frame_ready.clear()  # a frame delivered from now on wakes the wait below
        ready = self._ready_frames()
        if not ready:
            if all(s.done for s in self.streams):  # serving, no local stream: nothing to wait on but the next commit
                self.stop.wait(max(0.01, self.options.commit_interval_s))
                return []
            self._frame_ready.wait(GATHER_WAIT_S)
            ready = self._ready_frames()
        return ready

    def _ready_frames(self) -> list[tuple[Stream, Frame]]:
        return [(s, f) for s in self.streams if (f := self._next_frame(s, timeout=0)) is not None]

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

    def _schedule(self, ready: list[tuple[Stream, Frame]]) -> list[tuple[Stream, Frame]]:
        """The frames of `ready` due for detection (each stream's scheduler decides, and counts)."""
        return [(stream, frame) for stream, frame in ready if stream.scheduler.decide(frame.image)]

    def _process(self, ready: list[tuple[Stream, Frame]], ahead: Ahead | None = None) -> list[Record]:
        """One tick: detect on the frames due (prepared ahead when `ahead` has them), track, records."""
        due = ahead.due if ahead is not None else self._schedule(ready)
        detections = self._detect(due, ahead) if due else {}
        records: list[Record] = []
        names = self.slot.detector.names
        now = time.time()
        for stream, frame in ready:
            # detections, or None: the tracker predicts this frame's boxes (rows marked predicted)
            dets, predicted = stream.tracker.step(detections.get(id(stream)), self.options.publish_threshold)
            labels = dets.labels(names)
            records.append(OutboxRecord.of_frame(stream.stream_id, frame.index, frame.capture_time, dets, labels,
                                                 predicted))
            records += self._analyse(stream.stream_id, frame, dets, labels, predicted)
            self.health.record_frame((now - frame.capture_time) * 1000, labels, detected=id(stream) in detections)
        return records

    def _analyse(self, stream_id: str, frame: Frame, dets: Detections, labels: list[str],
                 predicted: np.ndarray) -> list[Record]:
        """A local stream's tracked frame through its zones and lines, then its objects: their events."""
        track_ids = dets.tracker_id if dets.tracker_id is not None else np.zeros(len(dets), np.int64)
        self.latest[stream_id] = LatestFrame(stream_id, frame.index, frame.capture_time, frame.image, dets.xyxy,
                                             track_ids, labels, dets.confidence)
        self.analytics.update(stream_id, frame.index, frame.capture_time, frame.image.shape[1::-1], dets.xyxy,
                              dets.tracker_id, labels)
        events = self.analytics.take_events()
        objects = self.objects.get(stream_id)
        if objects is None:  # objects: {enabled: false}
            return []
        return list(objects.update(frame.capture_time, dets.xyxy, dets.tracker_id, dets.class_id, labels,
                                   dets.confidence, predicted, events, frame.image))

    def _detect(self, due: list[tuple[Stream, Frame]], ahead: Ahead | None) -> dict[int, Detections]:
        """The detector's call on the frames due: stream (by id) -> its detections."""
        detector = self.slot.detector
        images = [frame.image for _, frame in due]
        prepared = ahead.prepared.result() if ahead is not None and ahead.prepared is not None else None
        if prepared is None or prepared.detector is not detector:  # none, or the detector was swapped
            prepared = detector.prepare(images)
        self._look_ahead()
        with self.slot.lock:
            outputs = detector.run_prepared(prepared)
        batch = detector.finish(prepared, outputs)
        ms = float(getattr(detector, "last_inference_ms", 0.0))
        self.health.record_inference(ms)
        self._observe(images, batch, ms)
        return {id(stream): dets for (stream, _), dets in zip(due, batch)}

    def _look_ahead(self) -> None:
        """Right before an inference call, with file sources only: take the next tick's frames
        (already decoded) and letterbox those due on the prepare thread while this call runs, so
        the next call starts without it. Live sources are not looked ahead: a tick should start
        from the newest frame there is, not one taken an inference earlier."""
        if self._preparer is None or self.stop.is_set():
            return
        ready = self._ready_frames()
        if not ready:
            return
        due = self._schedule(ready)
        prepared = self._preparer.submit(self.slot.detector.prepare, [f.image for _, f in due]) if due else None
        self._ahead = Ahead(ready, due, prepared)
