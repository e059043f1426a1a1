"""`edgefleet.v1.InferenceService` over gRPC: protobuf stops here, InferenceCore (agent.inference) does the work.

Frames are checked on the event loop (present, within the size limit, a consistent raw layout)
and queued to the core; results and per-frame errors are written back in order. The server has
gRPC health checking and reflection, and with a token every InferenceService call needs it.
"""
from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgefleet.common.auth import bearer_token
from edgefleet.v1 import inference_pb2, inference_pb2_grpc, types_pb2

from .batcher import BatcherStopped, FrameDropped
from .errors import AgentError
from .inference import Done, InferenceCore, InvalidFrame, Job, Payload, ServedStream, StreamBusy

logger = logging.getLogger(__name__)

SERVICE = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
PENDING_PER_CALL = 256
"""Frames of one DetectStream call read but not yet answered; beyond it the call stops reading
(HTTP/2 flow control then slows the client) instead of holding more memory."""


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


# ---- frames: checked on the event loop ----

CHANNELS = {inference_pb2.RawImage.BGR8: 3, inference_pb2.RawImage.RGB8: 3, inference_pb2.RawImage.GRAY8: 1}


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
        layout = inference_pb2.RawImage.Format.Name(raw.format)
        raise InvalidFrame(f"image.raw.pixels is {size} bytes; {raw.width}x{raw.height} {layout} needs "
                           f"{raw.width * raw.height * channels}")
    return Payload(pixels=raw.pixels, width=raw.width, height=raw.height, channels=channels,
                   rgb=raw.format == inference_pb2.RawImage.RGB8)

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

    async def DetectStream(self, request_iterator: AsyncIterator[inference_pb2.StreamFrame],
                           context: grpc.aio.ServicerContext) -> AsyncIterator[inference_pb2.StreamResult]:
        peer = context.peer()
        streams: dict[str, ServedStream | AgentError] = {}
        pending: asyncio.Queue[tuple[inference_pb2.StreamFrame, Future[Done] | AgentError] | None] = asyncio.Queue()
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

    def _start(self, frame: inference_pb2.StreamFrame, streams: dict, peer: str) -> Future[Done] | AgentError:
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

    async def _result(self, frame: inference_pb2.StreamFrame, started: Future[Done] | AgentError,
                      streams: dict) -> inference_pb2.StreamResult:
        result = inference_pb2.StreamResult(stream_id=frame.stream_id, frame_index=frame.frame_index)
        if frame.HasField("capture_time"):
            result.capture_time.CopyFrom(frame.capture_time)
        error: BaseException | None = None
        if isinstance(started, AgentError):
            error = started
        else:
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
        self._health = health.aio.HealthServicer()  # binds no event loop until it serves

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
                self._call(self._stop(self._server, grace), timeout=grace + 10)
            finally:
                self._server = None
        self.core.stop()
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    async def _stop(self, server: grpc.aio.Server, grace: float) -> None:
        await self._health.enter_graceful_shutdown()
        await server.stop(grace)
