"""The agent's connection to the controller: enroll, Session, PublishDetections.

Runs an asyncio loop on its own thread so detection never waits on the network. The
pipeline only writes the outbox; this side reads it, sends in sequence order, and deletes
rows when the controller acknowledges them. When the controller is away it retries with
exponential backoff and jitter while the outbox keeps everything.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from edgefleet.adaptive.plan import DevicePlan
from edgefleet.common.convert import frame_to_pb as record_to_pb
from edgefleet.v1 import agent_pb2, agent_pb2_grpc

from .convert import (
    command_from_pb,
    config_status_to_pb,
    deployment_to_pb,
    health_to_pb,
    hello_to_pb,
    plan_to_pb,
    profile_to_pb,
)
from .desired import ConfigStatus
from .engines import DeploymentStatus
from .errors import EnrollmentError, FetchError
from .health import HealthSample
from .identity import Identity, load_identity, save_identity
from .messages import Command, Hello
from .outbox import Outbox, OutboxRecord

logger = logging.getLogger(__name__)

AGENT_VERSION = "0.1.0"

KEEPALIVE = (("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000),
             ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0))
"""Ping the controller every 30 s of silence and drop the connection after 10 s without an answer:
a link that dies without a FIN or RST (a cellular NAT forgetting its mapping) is otherwise only
noticed when TCP gives up, many minutes later. The controller permits it (fleet.server)."""

FRESH_MAX = 1024
"""Committed records the link keeps in memory to send (Link.committed); older ones it reads back
from the outbox (a controller away for a while, a backlog)."""
IDLE_WAIT_S = 0.5
"""The publishing stream's longest sleep with nothing to send (commits, acks and stop wake it sooner)."""


class Backoff:
    """Exponential backoff with jitter: the n-th delay is uniform in [c/2, c], c = min(maximum,
    initial * 2**n) ("equal jitter": never under half the ceiling, so a fleet that lost its
    controller spreads its reconnects without any agent hammering it)."""

    def __init__(self, initial: float = 0.5, maximum: float = 10.0):
        self.initial, self.maximum = initial, maximum
        self.attempt = 0

    def reset(self) -> None:
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * (2 ** self.attempt))
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)


async def _first_set(timeout: float, *events: asyncio.Event) -> None:
    """Wait until one of `events` is set, at most `timeout` seconds."""
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class Link:
    """`start()` spawns the network thread; `stop()` ends it. Fatal errors land in `self.fatal`.

    Everything it sends and hands over is plain data (agent.messages, converted in agent.convert).
    Commands the controller sends over the Session go to `on_command`, called on the network
    thread: it must only hand them over (e.g. to a queue), never act on them there. `plan()`
    returns (version, DevicePlan): a heartbeat carries the plan when its version moved on since
    the hello or the last heartbeat that carried it, so the controller sees every change and its reason.

    `send_deployment` and `send_result` queue messages from any thread; they go up the Session
    between heartbeats (at most 256 wait while it is down, the oldest dropped first). After each
    (re)connect, right after the hello, the link re-sends `deployment()` (the latest deployment
    status, or None), so a restarted controller learns where the device is. `fetch_artifact` is a
    blocking FetchArtifact call for worker threads, on its own channel.

    `committed(records)` hands over records the pipeline has just committed (any thread): the
    link sends them from memory when they follow on what it sent last, sparing the outbox a read
    and a JSON parse per record; after a reconnect, a gap or a backlog it reads the outbox."""

    def __init__(
        self,
        controller: str,
        state_dir: Path,
        outbox_path: Path,
        enroll_key: str | None,
        name: str,
        hello: Callable[[], Hello],
        health: Callable[[], HealthSample],
        on_command: Callable[[Command], None] = lambda command: None,
        plan: Callable[[], tuple[int, DevicePlan]] = lambda: (0, DevicePlan()),
        deployment: Callable[[], DeploymentStatus | None] = lambda: None,
        credentials: grpc.ChannelCredentials | None = None,
        batch_size: int = 64,
        max_in_flight: int = 512,
        backoff_max_s: float = 10.0,
    ):
        self.controller = controller
        self.state_dir = state_dir
        self.outbox_path = outbox_path
        self.enroll_key = enroll_key
        self.name = name
        self._hello = hello
        self._health = health
        self._on_command = on_command
        self._plan = plan
        self._deployment = deployment
        self._outgoing: deque[agent_pb2.AgentMessage] = deque(maxlen=256)
        self._fresh: deque[OutboxRecord] = deque(maxlen=FRESH_MAX)
        self._credentials = credentials
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight
        self.backoff_max_s = backoff_max_s
        self.heartbeat_interval_s = 5.0
        self.identity: Identity | None = None
        self.fatal: Exception | None = None
        self.connected = threading.Event()
        self.acked_sequence = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # The link's loop sleeps until one of these is set (from any thread, through `_call_soon`).
        # An asyncio.Event binds to the loop that first waits on it (Python >= 3.10), so they are
        # made here and the loop `start()` runs uses them:
        self._more = asyncio.Event()  # there may be records to send (a commit, an ack)
        self._queued = asyncio.Event()  # a message joined `_outgoing`
        self._stopping = asyncio.Event()  # stop was asked
        self._forgot = False  # the pipeline's side dropped what it handed over: read the outbox
        self._identity_path = state_dir / "identity.json"

    # ---- thread ----

    def start(self) -> None:
        self._thread = threading.Thread(target=self._thread_main, name="link", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()

        def wake_all() -> None:
            self._stopping.set()
            self._more.set()

        self._call_soon(wake_all)
        if self._thread is not None:
            self._thread.join(timeout)

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except EnrollmentError as err:
            self.fatal = err
        except Exception as err:  # noqa: BLE001 - reported to the main thread, which exits
            logger.exception("link failed")
            self.fatal = err

    def _call_soon(self, callback: Callable[[], object]) -> None:
        """Run `callback` on the link's loop (from any thread); nothing when the loop is not running."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(callback)

    async def _wait_stop(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True when stop was requested."""
        await _first_set(seconds, self._stopping)
        return self._stop.is_set()

    def channel_options(self) -> list[tuple[str, int]]:
        """gRPC's own reconnect backoff, bounded like ours. Its defaults (1 s, growing 1.6x up to
        120 s) pace the channel's connection attempts underneath our retries: after an outage of a
        minute or two a restarted controller would wait up to two minutes for its agents."""
        maximum_ms = max(1000, int(self.backoff_max_s * 1000))
        return [("grpc.initial_reconnect_backoff_ms", min(500, maximum_ms)),
                ("grpc.min_reconnect_backoff_ms", min(500, maximum_ms)),
                ("grpc.max_reconnect_backoff_ms", maximum_ms),
                *KEEPALIVE]

    def _channel(self, api=grpc):
        """A channel to the controller (`api`: grpc, or grpc.aio), pinging it as KEEPALIVE says."""
        options = self.channel_options()
        return (api.secure_channel(self.controller, self._credentials, options=options) if self._credentials
                else api.insecure_channel(self.controller, options=options))

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._stop.is_set():  # asked before the loop ran: stop() found no loop to tell
            self._stopping.set()
        outbox = Outbox(self.outbox_path, durable=False)  # its commits are acks (see Outbox)
        try:
            async with self._channel(grpc.aio) as channel:
                stub = agent_pb2_grpc.AgentGatewayStub(channel)
                identity = await self._ensure_identity(stub)
                if identity is None:
                    return
                tasks = [
                    asyncio.create_task(self._session_forever(stub), name="session"),
                    asyncio.create_task(self._publish_forever(stub, outbox), name="publish"),
                ]
                stopping = asyncio.create_task(self._stopping.wait())
                await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                # Let both streams close in order (a last heartbeat, pending acks) before cancelling.
                _, pending = await asyncio.wait(tasks, timeout=3.0)
                for task in pending:
                    task.cancel()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                for result in results:
                    if isinstance(result, EnrollmentError):
                        raise result
        finally:
            outbox.close()

    # ---- enrollment ----

    def _load_identity(self) -> Identity | None:
        return load_identity(self._identity_path, self.controller)

    def _save_identity(self, identity: Identity) -> None:
        save_identity(self._identity_path, identity)

    def hardware_id(self) -> str:
        try:
            machine_id = Path("/etc/machine-id").read_text().strip()
        except OSError:
            machine_id = socket.gethostname()
        # Several agents on one box (demo, multi-camera servers) are told apart by state dir.
        return f"{machine_id}:{self.state_dir.resolve()}"

    async def _ensure_identity(self, stub) -> Identity | None:
        self.identity = self._load_identity()
        if self.identity is not None:
            return self.identity
        if not self.enroll_key:
            raise EnrollmentError(
                f"not enrolled with {self.controller} and no --enroll-key given"
            )
        hello = self._hello()
        request = agent_pb2.EnrollRequest(
            enroll_key=self.enroll_key, hardware_id=self.hardware_id(), hostname=self.name,
            agent_version=AGENT_VERSION, profile=profile_to_pb(hello.profile), labels=hello.labels,
        )
        backoff = Backoff(maximum=self.backoff_max_s)
        while not self._stop.is_set():
            try:
                response = await stub.Enroll(request, timeout=10)
            except grpc.aio.AioRpcError as err:
                if err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT):
                    raise EnrollmentError(
                        f"enrollment refused by {self.controller} ({err.code().name}): {err.details()}"
                    ) from err
                self._note_unreachable(err)
                if await self._wait_stop(backoff.next_delay()):
                    return None
                continue
            self.identity = Identity(response.device_id, response.device_token, self.controller,
                                     bytes(response.controller_public_key))
            self.heartbeat_interval_s = float(response.heartbeat_interval_s or self.heartbeat_interval_s)
            self._save_identity(self.identity)
            logger.info("enrolled as %s", response.device_id)
            return self.identity
        return None

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        if self.identity is None:  # the streams and fetches start after enrollment
            raise EnrollmentError("not enrolled yet: no device token to call the controller with")
        return (("authorization", f"Bearer {self.identity.token}"),)

    def _note_unreachable(self, err: grpc.aio.AioRpcError) -> None:
        message = f"{err.code().name}: {err.details()}"
        if message != self.last_error:
            logger.warning("controller %s: %s; retrying with backoff", self.controller, message)
        self.last_error = message
        self.connected.clear()

    def _check_auth(self, err: grpc.aio.AioRpcError) -> None:
        if err.code() == grpc.StatusCode.UNAUTHENTICATED:
            self._identity_path.unlink(missing_ok=True)
            raise EnrollmentError(
                f"device token refused by {self.controller} ({err.code().name}): {err.details()}; "
                "enroll again with --enroll-key"
            ) from err

    # ---- session ----

    async def _session_messages(self):
        plan_sent, _ = self._plan()  # read before the hello: a change in between goes out again
        yield agent_pb2.AgentMessage(hello=hello_to_pb(self._hello(), AGENT_VERSION))
        latest = self._deployment()
        if latest is not None:  # where this device's deployment stands, for a controller that (re)started meanwhile
            yield agent_pb2.AgentMessage(deployment=deployment_to_pb(latest))
        seq = 0
        stopping = False
        while not stopping:
            deadline = time.monotonic() + (self.heartbeat_interval_s if seq else 0.0)
            while not self._stop.is_set() and (left := deadline - time.monotonic()) > 0:
                self._queued.clear()  # a message queued from now on wakes the wait below
                while self._outgoing:
                    yield self._outgoing.popleft()
                await _first_set(left, self._queued, self._stopping)
            while self._outgoing:
                yield self._outgoing.popleft()
            stopping = self._stop.is_set()
            seq += 1  # the first heartbeat goes right after hello; the last one on stop
            heartbeat = agent_pb2.Heartbeat(seq=seq, health=health_to_pb(self._health(), time.time()))
            version, plan = self._plan()
            if version != plan_sent:
                heartbeat.plan.CopyFrom(plan_to_pb(plan))
                plan_sent = version
            yield agent_pb2.AgentMessage(heartbeat=heartbeat)

    async def _session_forever(self, stub) -> None:
        backoff = Backoff(maximum=self.backoff_max_s)
        while not self._stop.is_set():
            try:
                call = stub.Session(self._session_messages(), metadata=self._metadata())
                async for message in call:
                    kind = message.WhichOneof("body")
                    if kind == "accepted":
                        self.heartbeat_interval_s = float(message.accepted.heartbeat_interval_s or 5)
                        self.connected.set()
                        backoff.reset()
                        logger.info("session open as %s", message.accepted.device_id)
                    elif kind == "command":
                        self._on_command(command_from_pb(message.command))  # the loop thread applies it
            except grpc.aio.AioRpcError as err:
                self._check_auth(err)
                self._note_unreachable(err)
            if await self._wait_stop(backoff.next_delay()):
                return

    # ---- messages from other threads, artifacts ----

    def send_deployment(self, status: DeploymentStatus) -> None:
        """Queue a deployment's status; any thread."""
        self._queue(agent_pb2.AgentMessage(deployment=deployment_to_pb(status)))

    def committed(self, records: list[OutboxRecord]) -> None:
        """Records the pipeline has just committed to the outbox, in sequence order (any thread);
        [] forgets those handed over before (the outbox dropped records: read it instead)."""
        if records:
            self._fresh.extend(records)
        else:
            self._fresh.clear()
            self._forgot = True
        self._wake()

    def _wake(self) -> None:
        """Wake the publishing stream (any thread): records were committed."""
        self._call_soon(lambda: self._more.set())

    def _take_fresh(self, after: int) -> list[OutboxRecord]:
        """Up to a batch of handed-over records continuing right after sequence `after`, or []
        (then the outbox has them). Only the link thread takes; a record the pipeline's side
        evicted meanwhile shows as a gap, never as a record skipped."""
        records: list[OutboxRecord] = []
        while len(records) < self.batch_size:
            try:
                record = self._fresh.popleft()
            except IndexError:
                break
            expected = (records[-1].sequence if records else after) + 1
            if record.sequence < expected:
                continue  # already sent (read from the outbox, or before a reconnect)
            if record.sequence > expected:
                self._fresh.appendleft(record)
                break
            records.append(record)
        return records

    def send_config(self, status: ConfigStatus) -> None:
        """Queue a ConfigStatus (after an ApplyConfig); any thread."""
        self._queue(agent_pb2.AgentMessage(config=config_status_to_pb(status)))

    def send_result(self, command_id: str, ok: bool, error: str = "", detail: str = "") -> None:
        """Queue a CommandResult (`error` why it was refused, `detail` what was done); any thread."""
        self._queue(agent_pb2.AgentMessage(
            result=agent_pb2.CommandResult(command_id=command_id, ok=ok, error=error, detail=detail)))

    def _queue(self, message: agent_pb2.AgentMessage) -> None:
        self._outgoing.append(message)
        self._call_soon(lambda: self._queued.set())

    def fetch_artifact(self, sha256: str, offset: int, chunk_size: int = 0,
                       timeout_s: float = 3600.0) -> Iterator[agent_pb2.ArtifactChunk]:
        """FetchArtifact from `offset` on a blocking channel of its own (for a worker thread).

        The call may wait long for one of the controller's download slots before a byte comes (a
        large wave), so its deadline is long; a dead link is noticed by the channel's keepalive.

        Answers a retry cannot change (NOT_FOUND, PERMISSION_DENIED, UNAUTHENTICATED,
        INVALID_ARGUMENT) raise FetchError(retryable=False); any other error is retryable.
        """
        if self.identity is None:
            raise FetchError("not enrolled yet: no device token to fetch artifacts with")
        final = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
                 grpc.StatusCode.INVALID_ARGUMENT)
        with self._channel() as channel:
            stub = agent_pb2_grpc.AgentGatewayStub(channel)
            request = agent_pb2.FetchArtifactRequest(sha256=sha256, offset=offset, chunk_size=chunk_size)
            try:
                yield from stub.FetchArtifact(request, metadata=self._metadata(), timeout=timeout_s)
            except grpc.RpcError as err:
                raise FetchError(f"FetchArtifact {err.code().name}: {err.details()}",
                                 retryable=err.code() not in final) from err

    # ---- detections ----

    async def _publish_forever(self, stub, outbox: Outbox) -> None:
        backoff = Backoff(maximum=self.backoff_max_s)
        while not self._stop.is_set():
            try:
                await self._publish_once(stub, outbox, backoff)
            except grpc.aio.AioRpcError as err:
                self._check_auth(err)
                self._note_unreachable(err)
            except (asyncio.InvalidStateError, grpc.aio.UsageError, asyncio.TimeoutError) as err:
                logger.warning("detection stream ended: %r; reopening", err)
            if await self._wait_stop(backoff.next_delay()):
                return

    async def _publish_once(self, stub, outbox: Outbox, backoff: Backoff) -> None:
        """One PublishDetections stream: resend everything unacknowledged, then send what the
        pipeline commits: from memory (`committed`) while it continues the stream, from the outbox
        when it does not (a reconnect, a gap, a backlog the memory does not hold). Idle, it waits
        to be woken by a commit instead of polling the outbox."""
        call = stub.PublishDetections(metadata=self._metadata())
        sent = 0  # everything still in the outbox is unacknowledged: start from its oldest row
        behind = True  # the outbox may hold unsent records the memory does not: read it until caught up

        async def receive_acks() -> None:
            async for ack in call:
                if ack.acked_sequence > self.acked_sequence:
                    self.acked_sequence = ack.acked_sequence
                outbox.ack(ack.acked_sequence)
                backoff.reset()
                self._more.set()  # room in flight again

        receiver = asyncio.create_task(receive_acks())
        try:
            while not self._stop.is_set():
                if receiver.done():
                    receiver.result()  # raises the stream's error
                    return
                if sent - self.acked_sequence >= self.max_in_flight:
                    self._more.clear()  # an ack wakes the wait
                    await _first_set(IDLE_WAIT_S, self._more)
                    continue
                after = max(sent, self.acked_sequence)
                self._more.clear()  # a commit from now on wakes the wait below
                records = self._take_fresh(after)
                if not records and (behind or self._forgot or self._fresh):  # (a gap at the memory's head)
                    self._forgot = False
                    records = outbox.pending(after_sequence=after, limit=self.batch_size)
                    behind = len(records) == self.batch_size
                if not records:
                    await _first_set(IDLE_WAIT_S, self._more)
                    continue
                await call.write(agent_pb2.DetectionBatch(frames=[record_to_pb(r) for r in records]))
                sent = records[-1].sequence
                self.connected.set()
            await call.done_writing()
            await asyncio.wait_for(receiver, timeout=5.0)
        finally:
            receiver.cancel()
