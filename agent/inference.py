"""`edgefleet.v1.InferenceService`'s core: the agent's detector and trackers behind a batcher,
without gRPC (agent.inference_server serves it).

    server = InferenceServer(InferenceCore(detect, names), "0.0.0.0:50052")  # agent.inference_server
    port = server.start(); ...; server.stop()

`Detect` answers one image; `DetectStream` answers each frame of each client stream, in order,
tracked by that stream's own ByteTrack. Every frame of every client goes through one
`DynamicBatcher` (agent/batcher.py): one worker thread decodes a batch (JPEG/PNG or raw
pixels, on a small pool), runs one `detect_batch` call, steps the streams' trackers in frame
order, and resolves each frame's future; the event loop only parses, checks sizes and
writes results. A frame that is too large or undecodable gets its own error, a stream whose
frames come faster than the detector loses its oldest waiting frame (counted), and the call
goes on.

With an agent (`edge-agent serve --controller …`), `InferenceCore` is one of the agent's
feeds (agent.loop.Feed, made by `InferenceCore.feed` from the agent's FeedContext): `detect`
is the agent's detector (agent.loop.DetectorSlot, shared with its local streams under one
lock, swapped by its deployments), each stream frame's record goes into the agent's outbox
through `take_records()` (committed by the agent's loop like a local frame), frames and
latencies into the agent's `HealthMonitor`, and the served streams appear in its health
samples beside the local ones.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

from edgefleet.adaptive.schedule import FrameScheduler
from edgefleet.models.base import DEFAULT_CONFIDENCE_THRESHOLD
from edgefleet.models.detections import Detections

from .batcher import BatchConfig, DynamicBatcher
from .bytetrack import ByteTrack
from .errors import AgentError, ConfigError
from .health import HealthMonitor, StreamHealth
from .outbox import OutboxRecord

if TYPE_CHECKING:
    from .loop import FeedContext

logger = logging.getLogger(__name__)

DEFAULT_MAX_FRAME_BYTES = 8 << 20
"""8 MiB: a 1080p BGR frame (6.2 MB) fits; JPEGs are far smaller."""


class InvalidFrame(AgentError):
    """A frame that cannot be detected: too large, undecodable, malformed; INVALID_ARGUMENT."""


class StreamBusy(AgentError):
    """The stream id is fed by another call (or is a local source's); ALREADY_EXISTS."""


# ---- frames: decoded on the batcher's pool ----

@dataclass
class Payload:
    """An image as it came: encoded bytes, or raw pixels with their layout."""
    encoded: bytes = b""
    pixels: bytes = b""
    width: int = 0
    height: int = 0
    channels: int = 0
    rgb: bool = False

    @property
    def size(self) -> int:
        return len(self.encoded) or len(self.pixels)

    def decode(self) -> np.ndarray:
        """BGR uint8, HxWx3; InvalidFrame when the bytes are no image."""
        if self.encoded:
            image = cv2.imdecode(np.frombuffer(self.encoded, np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                raise InvalidFrame(f"image.encoded: {len(self.encoded)} bytes that decode as neither JPEG nor PNG")
            return image
        image = np.frombuffer(self.pixels, np.uint8).reshape(self.height, self.width, self.channels)
        if self.channels == 1:
            return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        return cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if self.rgb else image

# ---- served streams and the batch worker ----

@dataclass(eq=False)
class ServedStream:
    """One client stream id while a call feeds it: its tracker, schedule and counters."""
    stream_id: str
    peer: str
    tracker: ByteTrack
    scheduler: FrameScheduler
    frames: int = 0
    error: str = ""


@dataclass
class Job:
    payload: Payload
    stream: ServedStream | None  # None: a unary Detect (untracked)
    frame_index: int = 0
    capture_time: float = 0.0
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class Done:
    """A frame's result: its (tracked) detections and labels, or the error that kept it from them."""
    detections: Detections | None = None
    labels: list[str] = field(default_factory=list)
    predicted: np.ndarray | None = None
    width: int = 0
    height: int = 0
    error: AgentError | None = None
    server_ms: float = 0.0


class InferenceCore:
    """What the servicer runs on, without gRPC: the batcher, the served streams, the results' way out.

    `detect(images)` is the detector's batch call (any thread, one call at a time: the batcher's
    worker is its only caller here), `names()` its class names. With `keep_records`, each stream
    frame's record waits in `take_records()` for the agent's outbox. `reserved` stream ids (the
    agent's local sources) cannot be served.
    """

    def __init__(self, detect: Callable[[list[np.ndarray]], list[Detections]], names: Callable[[], list[str]],
                 batch: BatchConfig | None = None, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 health: HealthMonitor | None = None, tracker_factory: Callable[[], ByteTrack] = ByteTrack,
                 scheduler_factory: Callable[[], FrameScheduler] = FrameScheduler,
                 publish_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD, keep_records: bool = False,
                 reserved: frozenset[str] = frozenset(), decode_threads: int = 2):
        if max_frame_bytes < 1:
            raise ConfigError(f"--max-frame-bytes must be >= 1, got {max_frame_bytes}")
        self.detect, self.names = detect, names
        self.max_frame_bytes = max_frame_bytes
        self.health = health or HealthMonitor()
        self.tracker_factory, self.scheduler_factory = tracker_factory, scheduler_factory
        self.publish_threshold = publish_threshold
        self.batcher = DynamicBatcher(self._run_batch, batch)
        self._decoder = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="inference-decode")
        self._records: queue.SimpleQueue[OutboxRecord] | None = queue.SimpleQueue() if keep_records else None
        self._lock = threading.Lock()
        self._streams: dict[str, ServedStream] = {}
        self._reserved = reserved
        self.dropped_ended = 0
        self.frames_served = 0

    @classmethod
    def feed(cls, context: FeedContext, batch: BatchConfig | None = None, *,
             max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> InferenceCore:
        """The served streams as an agent's feed: its detector, health, schedules and outbox."""
        return cls(context.detect, context.names, batch, max_frame_bytes=max_frame_bytes, health=context.health,
                   scheduler_factory=context.new_scheduler,  # the agent's plan changes reach new streams too
                   publish_threshold=context.publish_threshold, keep_records=True,
                   reserved=context.local_stream_ids)

    def start(self) -> None:
        self.batcher.start()

    def stop(self) -> None:
        self.batcher.stop()
        self._decoder.shutdown(wait=True)

    # -- streams (event loop) --

    def claim(self, stream_id: str, peer: str) -> ServedStream:
        if not stream_id:
            raise InvalidFrame("stream_id is empty; name the stream (it names its tracker and its reports)")
        with self._lock:
            if stream_id in self._reserved:
                raise StreamBusy(f"stream_id {stream_id!r} is one of this agent's own --source streams")
            if stream_id in self._streams:
                raise StreamBusy(f"stream_id {stream_id!r} is fed by another call ({self._streams[stream_id].peer})")
            stream = self._streams[stream_id] = ServedStream(stream_id, peer, self.tracker_factory(),
                                                             self.scheduler_factory())
        logger.info("serving stream %s for %s", stream_id, peer)
        return stream

    def set_detect_interval(self, interval: int) -> None:
        """A new detect interval for every stream being served (the agent's plan changed); streams
        claimed later get it from `scheduler_factory`."""
        with self._lock:
            for stream in self._streams.values():
                stream.scheduler.set_interval(interval)

    def release(self, stream: ServedStream) -> None:
        dropped = self.batcher.forget(stream)
        with self._lock:
            self.dropped_ended += dropped
            if self._streams.get(stream.stream_id) is stream:
                del self._streams[stream.stream_id]
        logger.info("stream %s ended: %d frame(s), %d dropped", stream.stream_id, stream.frames, dropped)

    def dropped(self, stream: ServedStream) -> int:
        return self.batcher.dropped[stream]

    def submit(self, job: Job):
        """Queue a checked frame; a Future of its `Done` (FrameDropped when a newer one pushed it out)."""
        return self.batcher.submit(job.stream if job.stream is not None else object(), job)

    # -- the agent's view (any thread) --

    def take_records(self) -> list[OutboxRecord]:
        """Stream frames' records since the last call, in the order they were processed."""
        records = []
        if self._records is not None:
            while True:
                try:
                    records.append(self._records.get_nowait())
                except queue.Empty:
                    return records
        return records

    def dropped_total(self) -> int:
        with self._lock:
            live = list(self._streams.values())
            return self.dropped_ended + sum(self.batcher.dropped[s] for s in live)

    def stream_health(self) -> list[StreamHealth]:
        """The served streams, as the agent's health sample lists its streams."""
        with self._lock:
            live = list(self._streams.values())
        return [StreamHealth(s.stream_id, f"grpc:{s.peer}", "running", s.frames, self.batcher.dropped[s], s.error)
                for s in live]

    # -- the batch worker (the batcher's thread) --

    def _decode(self, job: Job) -> np.ndarray | AgentError:
        try:
            return job.payload.decode()
        except InvalidFrame as err:
            return err
        except (cv2.error, ValueError) as err:
            return InvalidFrame(f"image cannot be decoded: {err}")

    def _run_batch(self, jobs: list[Job]) -> list[Done]:
        images = list(self._decoder.map(self._decode, jobs)) if len(jobs) > 1 else [self._decode(jobs[0])]
        due: list[int] = []  # indices of the jobs to detect on
        due_images: list[np.ndarray] = []
        for i, (job, image) in enumerate(zip(jobs, images)):
            if isinstance(image, AgentError):
                continue
            if job.stream is None or job.stream.scheduler.decide(image):
                due.append(i)
                due_images.append(image)
        detected = dict(zip(due, self.detect(due_images) if due else []))
        names = self.names()
        now, wall = time.monotonic(), time.time()
        results = []
        for i, (job, image) in enumerate(zip(jobs, images)):
            if isinstance(image, AgentError):
                if job.stream is not None:
                    job.stream.error = str(image)
                results.append(Done(error=image, server_ms=(now - job.arrived) * 1000))
                continue
            height, width = image.shape[:2]
            if job.stream is None:  # a plain Detect: always detected on
                dets = detected[i][detected[i].confidence >= self.publish_threshold]
                results.append(Done(dets, dets.labels(names), np.zeros(len(dets), bool), width, height,
                                    server_ms=(now - job.arrived) * 1000))
                continue
            dets, predicted = job.stream.tracker.step(detected.get(i), self.publish_threshold)
            labels = dets.labels(names)
            job.stream.frames += 1
            self.frames_served += 1
            self.health.record_frame((wall - job.capture_time) * 1000, labels, detected=i in detected)
            if self._records is not None:
                self._records.put(OutboxRecord.of_frame(job.stream.stream_id, job.frame_index, job.capture_time,
                                                        dets, labels, predicted))
            results.append(Done(dets, labels, predicted, width, height, server_ms=(now - job.arrived) * 1000))
        return results


def standalone_detect(detector, health: HealthMonitor) -> Callable[[list[np.ndarray]], list[Detections]]:
    """`detect` for a core without an agent: the detector's batch call, timed into `health`."""
    def detect(images: list[np.ndarray]) -> list[Detections]:
        batch = detector.detect_batch(images)
        health.record_inference(float(getattr(detector, "last_inference_ms", 0.0)))
        return batch
    return detect
