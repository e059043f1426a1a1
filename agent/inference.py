"""`edgefleet.v1.InferenceService`: the agent's detector and trackers as a gRPC service.

    server = InferenceServer(InferenceCore(detect, names), "0.0.0.0:50052")
    port = server.start(); ...; server.stop()

`Detect` answers one image; `DetectStream` answers each frame of each client stream, in order,
tracked by that stream's own ByteTrack. Every frame of every client goes through one
`DynamicBatcher` (agent/batcher.py): one worker thread decodes a batch (JPEG/PNG or raw
pixels, on a small pool), runs one `detect_batch` call, steps the streams' trackers in frame
order, and resolves each frame's future; the event loop only parses, checks sizes and
writes results. A frame that is too large or undecodable gets its own error, a stream whose
frames come faster than the detector loses its oldest waiting frame (counted), and the call
goes on.

With an agent (`edge-agent serve --controller …`), `InferenceCore` is the agent's served
feed: `detect` is `Agent.detect_served` (the agent's detector, shared with its local streams
under one lock, swapped by its deployments), each stream frame's record goes into the
agent's outbox through `take_records()` (committed by the agent's loop like a local frame),
frames and latencies into the agent's `HealthMonitor`, and the served streams appear in its
health samples beside the local ones.
"""
from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgefleet.adaptive.schedule import FrameScheduler
from edgefleet.common.auth import bearer_token
from edgefleet.models.base import DEFAULT_CONFIDENCE_THRESHOLD
from edgefleet.models.detections import Detections
from edgefleet.v1 import inference_pb2, inference_pb2_grpc, types_pb2

from .batcher import BatchConfig, BatcherStopped, DynamicBatcher, FrameDropped
from .bytetrack import ByteTrack
from .errors import AgentError, ConfigError
from .health import HealthMonitor
from .outbox import OutboxRecord

logger = logging.getLogger(__name__)

SERVICE = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
DEFAULT_MAX_FRAME_BYTES = 8 << 20
"""8 MiB: a 1080p BGR frame (6.2 MB) fits; JPEGs are far smaller."""
PENDING_PER_CALL = 256
"""Frames of one DetectStream call read but not yet answered; beyond it the call stops reading
(HTTP/2 flow control then slows the client) instead of holding more memory."""


class InvalidFrame(AgentError):
    """A frame that cannot be detected: too large, undecodable, malformed; INVALID_ARGUMENT."""


class StreamBusy(AgentError):
    """The stream id is fed by another call (or is a local source's); ALREADY_EXISTS."""


def status_for(err: BaseException) -> grpc.StatusCode:
    """The one mapping of this service's errors to gRPC codes (whole calls and per-frame errors)."""
    if isinstance(err, InvalidFrame):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(err, StreamBusy):
        return grpc.StatusCode.ALREADY_EXISTS
    if isinstance(err, FrameDropped):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(err, BatcherStopped):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


# ---- frames: checked on the event loop, decoded on the batcher's pool ----

CHANNELS = {inference_pb2.RawImage.BGR8: 3, inference_pb2.RawImage.RGB8: 3, inference_pb2.RawImage.GRAY8: 1}


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


def payload_from_pb(image: inference_pb2.Image, max_bytes: int) -> Payload:
    """Check an Image at the edge: present, within `max_bytes`, raw layout consistent."""
    kind = image.WhichOneof("data")
    if kind is None:
        raise InvalidFrame("image is empty: set image.encoded (JPEG/PNG) or image.raw")
    size = len(image.encoded) if kind == "encoded" else len(image.raw.pixels)
    if size > max_bytes:
        raise InvalidFrame(f"image is {size} bytes, over this server's limit of {max_bytes} bytes (--max-frame-bytes)")
    if kind == "encoded":
        if not size:
            raise InvalidFrame("image.encoded is empty")
        return Payload(encoded=image.encoded)
    raw = image.raw
    channels = CHANNELS.get(raw.format)
    if channels is None:
        raise InvalidFrame(f"image.raw.format {raw.format} is not one of BGR8, RGB8, GRAY8")
    if not raw.width or not raw.height:
        raise InvalidFrame(f"image.raw is {raw.width}x{raw.height}; width and height must be > 0")
    if size != raw.width * raw.height * channels:
        raise InvalidFrame(f"image.raw.pixels is {size} bytes; {raw.width}x{raw.height} "
                           f"{inference_pb2.RawImage.Format.Name(raw.format)} needs {raw.width * raw.height * channels}")
    return Payload(pixels=raw.pixels, width=raw.width, height=raw.height, channels=channels,
                   rgb=raw.format == inference_pb2.RawImage.RGB8)


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

    def stream_health(self) -> list[dict]:
        """The served streams, as the agent's health sample lists its streams."""
        with self._lock:
            live = list(self._streams.values())
        return [{"stream_id": s.stream_id, "source": f"grpc:{s.peer}", "state": "running", "frames": s.frames,
                 "dropped": self.batcher.dropped[s], "error": s.error} for s in live]

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
        due = []  # indices of the jobs to detect on
        for i, (job, image) in enumerate(zip(jobs, images)):
            if isinstance(image, AgentError):
                continue
            if job.stream is None or job.stream.scheduler.decide(image):
                due.append(i)
        detected = dict(zip(due, self.detect([images[i] for i in due]) if due else []))
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
            dets = detected.get(i)
            if job.stream is None:
                dets = dets[dets.confidence >= self.publish_threshold]
                results.append(Done(dets, dets.labels(names), np.zeros(len(dets), bool), width, height,
                                    server_ms=(now - job.arrived) * 1000))
                continue
            dets, predicted = job.stream.tracker.step(dets, self.publish_threshold)
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


# ---- the servicer: protobuf stops here ----

def detections_to_pb(done: Done) -> list[types_pb2.Detection]:
    dets = done.detections
    if dets is None or not len(dets):
        return []
    tracked = dets.tracker_id.tolist() if dets.tracker_id is not None else [0] * len(dets)
    predicted = done.predicted.tolist() if done.predicted is not None else [False] * len(dets)
    return [types_pb2.Detection(track_id=max(int(t), 0), class_id=c, label=label, score=s,
                                box=types_pb2.Box(x1=b[0], y1=b[1], x2=b[2], y2=b[3]), predicted=p)
            for t, c, label, s, b, p in zip(tracked, dets.class_id.tolist(), done.labels, dets.confidence.tolist(),
                                            dets.xyxy.tolist(), predicted)]


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, core: InferenceCore):
        self.core = core

    async def Detect(self, request, context):
        try:
            job = Job(payload_from_pb(request.image, self.core.max_frame_bytes), None)
            done = await asyncio.wrap_future(self.core.submit(job))
            if done.error is not None:
                raise done.error
        except AgentError as err:
            await context.abort(status_for(err), str(err))
        return inference_pb2.DetectResponse(detections=detections_to_pb(done), width=done.width, height=done.height)

    async def DetectStream(self, request_iterator, context):
        peer = context.peer()
        streams: dict[str, ServedStream | AgentError] = {}
        pending: asyncio.Queue = asyncio.Queue()
        room = asyncio.Semaphore(PENDING_PER_CALL)

        async def read() -> None:
            try:
                async for frame in request_iterator:
                    await room.acquire()
                    pending.put_nowait((frame, self._start(frame, streams, peer)))
            finally:
                pending.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (entry := await pending.get()) is not None:
                frame, started = entry
                yield await self._result(frame, started, streams)
                room.release()
            await reader  # raises what ended the reading, if anything did
        finally:
            reader.cancel()
            for stream in streams.values():
                if isinstance(stream, ServedStream):
                    self.core.release(stream)

    def _start(self, frame: inference_pb2.StreamFrame, streams: dict, peer: str):
        """Check a frame and queue it: its Future, or the error it gets at once."""
        stream = streams.get(frame.stream_id)
        if stream is None:
            try:
                stream = self.core.claim(frame.stream_id, peer)
            except StreamBusy as err:
                stream = err  # every frame of this id in this call gets it
            except InvalidFrame as err:
                return err
            streams[frame.stream_id] = stream
        if isinstance(stream, AgentError):
            return stream
        try:
            payload = payload_from_pb(frame.image, self.core.max_frame_bytes)
        except InvalidFrame as err:
            stream.error = str(err)
            return err
        capture = frame.capture_time.ToNanoseconds() / 1e9 if frame.HasField("capture_time") else time.time()
        return self.core.submit(Job(payload, stream, frame.frame_index, capture))

    async def _result(self, frame: inference_pb2.StreamFrame, started, streams: dict) -> inference_pb2.StreamResult:
        result = inference_pb2.StreamResult(stream_id=frame.stream_id, frame_index=frame.frame_index)
        if frame.HasField("capture_time"):
            result.capture_time.CopyFrom(frame.capture_time)
        error = started if isinstance(started, BaseException) else None
        if error is None:
            try:
                done = await asyncio.wrap_future(started)
            except (AgentError, Exception) as err:  # noqa: BLE001 - a failed batch is this frame's error
                error = err
            else:
                error = done.error
                result.detections.extend(detections_to_pb(done))
                result.width, result.height, result.server_ms = done.width, done.height, done.server_ms
        if error is not None:
            result.error.code = status_for(error).value[0]
            result.error.message = str(error) or type(error).__name__
        stream = streams.get(frame.stream_id)
        if isinstance(stream, ServedStream):
            result.dropped = self.core.dropped(stream)
        return result


# ---- auth and the server ----

class TokenInterceptor(grpc.aio.ServerInterceptor):
    """With a shared token: InferenceService calls need "authorization: Bearer <token>", else
    UNAUTHENTICATED. Health checking and reflection stay open."""

    def __init__(self, token: str):
        self._token = token.encode()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(f"/{SERVICE}/"):
            return handler
        token = bearer_token(details.invocation_metadata)
        if token is not None and hmac.compare_digest(token.encode(), self._token):
            return handler
        message = "missing 'authorization: Bearer <token>' metadata" if token is None else "wrong token"

        async def refuse(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        kwargs = {"request_deserializer": handler.request_deserializer,
                  "response_serializer": handler.response_serializer}
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(refuse, **kwargs)
        return grpc.unary_unary_rpc_method_handler(refuse, **kwargs)


class InferenceServer:
    """The service on its own event-loop thread, with gRPC health checking and reflection.

    `start()` binds (port 0 picks one; returned) and starts the core; `stop()` goes NOT_SERVING,
    lets calls finish within `grace`, then stops the batcher (what still waits gets UNAVAILABLE).
    """

    _ids = itertools.count(1)

    def __init__(self, core: InferenceCore, listen: str, token: str | None = None,
                 credentials: grpc.ServerCredentials | None = None):
        self.core, self.listen, self.token, self.credentials = core, listen, token, credentials
        self.port: int | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"inference-server-{next(self._ids)}",
                                        daemon=True)
        self._server: grpc.aio.Server | None = None
        self._health = None

    def _call(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> int:
        self._thread.start()
        self.core.start()
        try:
            self.port = self._call(self._start())
        except BaseException:
            self.core.stop()
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise
        logger.info("inference service listening on %s (port %d), max batch %d, window %.1f ms%s", self.listen,
                    self.port, self.core.batcher.config.max_batch, self.core.batcher.config.window_s * 1000,
                    ", token required" if self.token else "")
        return self.port

    async def _start(self) -> int:
        limit = max(2 * self.core.max_frame_bytes, self.core.max_frame_bytes + (1 << 20))
        # the transport takes messages up to twice the frame limit, so a frame a little over the
        # limit gets its own INVALID_ARGUMENT; beyond that gRPC refuses it (RESOURCE_EXHAUSTED)
        self._server = grpc.aio.server(
            interceptors=[TokenInterceptor(self.token)] if self.token else [],
            options=[("grpc.max_receive_message_length", limit)],
        )
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(self.core), self._server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server)
        port = (self._server.add_secure_port(self.listen, self.credentials) if self.credentials
                else self._server.add_insecure_port(self.listen))
        if not port:
            raise OSError(f"cannot listen on {self.listen}")
        await self._server.start()
        for service in ("", SERVICE):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return port

    def stop(self, grace: float = 2.0) -> None:
        if self._server is not None:
            try:
                self._call(self._stop(grace), timeout=grace + 10)
            finally:
                self._server = None
        self.core.stop()
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    async def _stop(self, grace: float) -> None:
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)
