"""AgentGateway: the service devices call."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Mapping

import grpc

from edgefleet.common.convert import InvalidFrame, batch_records, snapshot_from_pb
from edgefleet.common.records import FrameRecord, ObjectEventRecord, Record
from edgefleet.v1 import agent_pb2, agent_pb2_grpc

from .artifacts import ArtifactFiles, chunk_size
from .convert import command_to_pb, config_status_from_pb, status_report, to_dict
from .errors import InvalidArgument, NotFound, OutOfRange, PermissionDenied, Unauthenticated
from .hub import Command, Hub
from .ingest import PUBLISH_PIPELINE
from .interceptors import current_device
from .metrics import ControllerMetrics
from .rollouts import RolloutOptions, Rollouts
from .selectors import check_label
from .store import DeviceRecord
from .twin import Twin, describe_status
from .twin_store import config_view

logger = logging.getLogger(__name__)


class AgentGatewayServicer(agent_pb2_grpc.AgentGatewayServicer):
    def __init__(self, db, hub: Hub, heartbeat_interval_s: int, metrics: ControllerMetrics | None = None, *,
                 rollouts: Rollouts | None = None, files: ArtifactFiles | None = None, public_key: bytes = b"",
                 fetch_streams: int = RolloutOptions.fetch_streams,
                 fetch_stream_s: float = RolloutOptions.fetch_stream_s):
        self.db = db
        self.hub = hub
        self.twin = Twin(db, hub)
        self.heartbeat_interval_s = heartbeat_interval_s
        self.metrics = metrics or ControllerMetrics()  # counted either way; served only when configured
        self.rollouts = rollouts
        self.files = files
        self.public_key = public_key
        self.fetch_stream_s = fetch_stream_s
        self._fetch_slots = asyncio.Semaphore(fetch_streams)  # FIFO: waiters get a slot in arrival order
        self._fetch_count = {"active": 0, "waiting": 0}
        self._fetch_open: Counter[str] = Counter()  # device -> its FetchArtifact streams, waiting or sending
        self._fetch_ended: dict[str, float] = {}  # device -> when its last one ended

    async def Enroll(self, request: agent_pb2.EnrollRequest,
                     context: grpc.aio.ServicerContext) -> agent_pb2.EnrollResponse:
        if not request.enroll_key:
            raise InvalidArgument("enroll_key is empty")
        device, token = await self.db.enroll(
            request.enroll_key, request.hardware_id, request.hostname or "device",
            request.agent_version, to_dict(request.profile), _reported_labels(request.labels),
        )
        self.hub.device_changed(device, f"{device.hostname} enrolled as {device.device_id}")
        return agent_pb2.EnrollResponse(
            device_id=device.device_id, device_token=token, heartbeat_interval_s=self.heartbeat_interval_s,
            controller_public_key=self.public_key,
        )

    async def Session(self, request_iterator: AsyncIterator[agent_pb2.AgentMessage],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[agent_pb2.ControllerMessage]:
        """Hello first; then heartbeats up and commands down until the device closes its side.

        A stored plan override goes down right after `accepted`, so a device that was away
        when the operator set it gets it on reconnect; so do the deployments of running rollouts
        it has not finished. Deployment statuses it sends go to the rollouts.
        """
        device_id = current_device.get()
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        if first.WhichOneof("body") != "hello":
            raise InvalidArgument(f"the first Session message must be hello, got {first.WhichOneof('body')}")
        hello = first.hello
        device = await self.db.record_hello(
            device_id, hello.agent_version, to_dict(hello.profile), to_dict(hello.plan), list(hello.streams),
            labels=_reported_labels(hello.labels),
        )
        device = await self.twin.on_status(device_id, config_status_from_pb(hello.config))
        commands = self.hub.open_session(device_id)
        closing = self.hub.stream_opened(device_id)  # RevokeDevice ends the Session (fleet.commands)
        self.hub.device_changed(device, f"{device.hostname} ({device_id}) connected")
        logger.info("session opened: %s (%s)", device_id, hello.agent_version)

        async def read_heartbeats() -> None:
            nonlocal device  # the disconnect event reports the last state the device sent
            async for up in request_iterator:
                updated = await self._session_message(device_id, up)
                if updated is not None:
                    device = updated

        reader = asyncio.create_task(read_heartbeats(), name=f"session-{device_id}")
        try:
            yield agent_pb2.ControllerMessage(
                accepted=agent_pb2.SessionAccepted(
                    device_id=device_id, heartbeat_interval_s=self.heartbeat_interval_s,
                    acked_sequence=device.acked_sequence,
                )
            )
            if device.plan_override:
                yield command_to_pb(Command("set_plan", device.plan_override))
            for command in await self.rollouts.commands_for(device_id) if self.rollouts is not None else ():
                yield command_to_pb(command)
            if (pending := self.twin.pending(device)) is not None:  # a desired config set while it was away
                yield command_to_pb(pending)
            async for command in _until_done(commands, reader, closing):
                yield command_to_pb(command)
        finally:
            reader.cancel()
            self.hub.stream_closed(device_id, closing)
            self.hub.close_session(device_id, commands)
            self.hub.device_changed(device, f"{device.hostname} ({device_id}) disconnected")
            logger.info("session closed: %s", device_id)

    async def _session_message(self, device_id: str, up: agent_pb2.AgentMessage) -> DeviceRecord | None:
        """One message of a device's Session after its hello; the device's new state for a heartbeat."""
        kind = up.WhichOneof("body")
        if kind == "deployment" and self.rollouts is not None:
            await self.rollouts.on_status(device_id, status_report(up.deployment))
        elif kind == "result":
            result = up.result
            # a picture asked for (GetFrame, every 2 s while a TUI shows the device) is routine: debug
            logger.log(logging.DEBUG if result.ok and result.HasField("snapshot") else logging.INFO,
                       "%s: command %s %s", device_id, result.command_id,
                       "done" if result.ok else f"failed: {result.error}")
            ok, error, snapshot = result.ok, result.error, None
            if result.HasField("snapshot"):
                try:
                    snapshot = snapshot_from_pb(result.snapshot)
                except InvalidFrame as err:  # the device's bug fails its answer, not its Session
                    ok, error = False, f"the device answered a picture the controller cannot read: {err}"
            self.hub.answered(device_id, result.command_id, ok, error, result.detail, snapshot)
        elif kind == "config":
            device = await self.twin.on_status(device_id, config_status_from_pb(up.config))
            self.hub.device_changed(device, f"{device.hostname} ({device_id}) {describe_status(config_view(device))}")
            return device
        elif kind == "heartbeat":
            hb = up.heartbeat
            plan = to_dict(hb.plan) if hb.HasField("plan") else None
            device = await self.db.record_heartbeat(device_id, to_dict(hb.health), plan)
            note = f"{device.hostname} ({device_id}) changed its plan" if plan else ""
            self.hub.device_changed(device, note)
            return device
        else:
            logger.debug("session %s: ignoring %s", device_id, kind)
        return None

    async def PublishDetections(self, request_iterator: AsyncIterator[agent_pb2.DetectionBatch],
                                context: grpc.aio.ServicerContext) -> AsyncIterator[agent_pb2.PublishAck]:
        """Each batch joins the next group commit (`fleet.ingest`); its ack goes down once that commits.

        A batch's records of every kind (frames, object events, counts, snapshots) are stored together;
        only its frames go on to WatchDetections (`Hub.frames_committed`), whether `--store-frames`
        keeps them or not.

        Up to `PUBLISH_PIPELINE` batches of a stream wait for commits at once: the next one is read
        and queued while the one before commits, so under load a device is not held to one batch
        per commit. Batches are queued in stream order and the writer commits in queue order, so
        the acks go down in order, each for a committed batch; an error ends the stream after the
        acks of the batches before it.
        """
        device_id = current_device.get()
        queued: asyncio.Queue = asyncio.Queue()  # (arrival time, its frames, commit future); None: no more
        slots = asyncio.Semaphore(PUBLISH_PIPELINE)

        async def read() -> None:
            try:
                batches = aiter(request_iterator)
                while True:
                    await slots.acquire()
                    batch = await anext(batches, None)
                    if batch is None:
                        return
                    arrived = time.perf_counter()
                    records = _own_records(device_id, batch)
                    frames = records if len(records) == len(batch.frames) else [
                        r for r in records if type(r) is FrameRecord]
                    queued.put_nowait((arrived, frames, self.db.ingest.enqueue(device_id, records)))
            finally:
                queued.put_nowait(None)

        closing = self.hub.stream_opened(device_id)  # RevokeDevice ends the stream after the batches queued
        closing.add_done_callback(lambda _: queued.put_nowait(None))
        reader = asyncio.create_task(read(), name=f"publish-{device_id}")
        try:
            while (item := await queued.get()) is not None:
                arrived, frames, committed = item
                result = await committed
                slots.release()
                if frames:  # only frames go on to WatchDetections and the other replicas
                    self.hub.frames_committed(device_id, frames)
                self.metrics.frames_ingested.inc(len(frames))
                self.metrics.detections_ingested.inc(sum(len(f.objects) for f in frames))
                self.metrics.duplicate_frames.inc(result.duplicates)
                self.metrics.ack_latency.observe(time.perf_counter() - arrived)
                yield agent_pb2.PublishAck(acked_sequence=result.acked_sequence, duplicates=result.duplicates)
            if closing.done():
                raise Unauthenticated(closing.result())
            await reader  # its error, if it ended with one
        finally:
            self.hub.stream_closed(device_id, closing)
            reader.cancel()
            while not queued.empty():  # the stream went away: its queued batches may still commit
                item = queued.get_nowait()
                if item is not None and not item[2].cancel() and not item[2].cancelled():
                    item[2].exception()  # retrieved: asyncio logs no "never retrieved" for it

    async def FetchArtifact(self, request: agent_pb2.FetchArtifactRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[agent_pb2.ArtifactChunk]:
        """Chunks from the requested offset to the end, or until the stream's turn is over; a device
        fetches only what a rollout sent it.

        At most `fetch_streams` streams send at once (each holds a chunk or two in memory); the
        others wait for a slot in arrival order. A stream ends cleanly after `fetch_stream_s`,
        short of the end, and the device asks again from the offset it reached: a slow device
        gives its slot up instead of holding it for its whole download. While a device has a
        stream open, waiting or not, its rollout does not time it out (`fetch_contact`)."""
        device_id = current_device.get()
        if self.files is None:
            raise NotFound("this controller stores no artifacts")
        self.files.path(request.sha256)  # InvalidArgument for a malformed sha256
        if not await self.db.device_may_fetch(device_id, request.sha256):
            raise PermissionDenied(f"device {device_id!r} is in no rollout of artifact {request.sha256[:12]}")
        await asyncio.to_thread(self.files.prepare, request.sha256)  # a replica's first fetch reads the database
        with self.files.open(request.sha256) as (_, total):  # refused before waiting: gone, or a bad offset
            if request.offset > total:
                raise OutOfRange(f"offset {request.offset} is past the end of artifact {request.sha256[:12]} "
                                 f"({total} bytes)")
        self._fetch_open[device_id] += 1
        try:
            # aclosing: the sender, and the fetch slot it holds, is closed at once when this stream ends
            async with contextlib.aclosing(self._send_in_turn(self.files, request)) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            self._fetch_open[device_id] -= 1
            if not self._fetch_open[device_id]:
                del self._fetch_open[device_id]
            self._fetch_ended[device_id] = time.time()

    def fetch_contact(self, device_id: str) -> float:
        """When the device last had a FetchArtifact stream open: now while it has one (waiting
        for a slot or sending), 0.0 if never. The rollout timeout counts from this too."""
        return time.time() if device_id in self._fetch_open else self._fetch_ended.get(device_id, 0.0)

    async def _send_in_turn(self, files: ArtifactFiles,
                            request: agent_pb2.FetchArtifactRequest) -> AsyncGenerator[agent_pb2.ArtifactChunk, None]:
        """Wait for a download slot, then send from the requested offset to the end or until the turn is over."""
        self._count_streams("waiting", 1)
        try:
            await self._fetch_slots.acquire()
        finally:
            self._count_streams("waiting", -1)
        self._count_streams("active", 1)
        try:
            with files.open(request.sha256) as (fd, total):  # artifacts never change once stored
                offset, size = request.offset, chunk_size(request.chunk_size)
                turn_ends = time.monotonic() + self.fetch_stream_s
                while True:  # at the end exactly, one empty chunk says so
                    data = await asyncio.to_thread(os.pread, fd, size, offset)
                    if not data and offset < total:
                        raise NotFound(f"artifact {request.sha256[:12]} shrank while it was read")
                    yield agent_pb2.ArtifactChunk(offset=offset, data=data, total_size=total)
                    self.metrics.artifact_bytes_served.inc(len(data))
                    offset += len(data)
                    if offset >= total or time.monotonic() >= turn_ends:
                        return
        finally:
            self._count_streams("active", -1)
            self._fetch_slots.release()

    def _count_streams(self, state: str, change: int) -> None:
        self._fetch_count[state] += change
        self.metrics.artifact_streams.set(self._fetch_count[state], state=state)


def _own_records(device_id: str, batch: agent_pb2.DetectionBatch) -> list[Record]:
    """The batch's records (`common.convert.batch_records`), each the device's own: InvalidArgument for one
    no record can hold, PermissionDenied for one that names another device."""
    try:
        records = batch_records(batch)
    except InvalidFrame as err:
        raise InvalidArgument(str(err)) from err
    for rec in records:
        holder = rec.object if isinstance(rec, ObjectEventRecord) else rec
        if holder.device_id and holder.device_id != device_id:
            claimed = holder.device_id if len(holder.device_id) <= 64 else holder.device_id[:64] + "..."
            raise PermissionDenied(f"device {device_id!r} cannot publish as {claimed!r}")
        holder.device_id = device_id
    return records


def _reported_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """A device's own labels (EnrollRequest, Hello), checked as the agent checks them: InvalidArgument otherwise."""
    for key, value in labels.items():
        check_label(key, value)
    return dict(labels)


async def _until_done(commands: asyncio.Queue, reader: asyncio.Task,
                      closing: asyncio.Future[str]) -> AsyncIterator[Command]:
    """Commands from the queue until `reader` ends; then its error, if it had one, is raised.
    When `closing` gets a reason first (the device was revoked), Unauthenticated with it."""
    while True:
        getter = asyncio.ensure_future(commands.get())
        try:
            await asyncio.wait({getter, reader, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            yield getter.result()
            continue
        if closing.done():
            raise Unauthenticated(closing.result())
        reader.result()
        return
