"""The agent's connection to the controller: enroll, Session, PublishDetections.

Runs an asyncio loop on its own thread so detection never waits on the network. The
pipeline only writes the outbox; this side reads it, sends in sequence order, and deletes
rows when the controller acknowledges them. When the controller is away it retries with
exponential backoff and jitter while the outbox keeps everything.

The controller may be several replicas (agent.controllers): the link is connected to one at a
time, Session and PublishDetections on one channel. When that connection is lost (the Session
ends, the detection stream fails with UNAVAILABLE, CANCELLED or DEADLINE_EXCEEDED, the keepalive
times out) it tries the others, the lost one last, and resends everything not yet acknowledged
to the one it reaches: the outbox holds it, and storage is idempotent on (device, sequence).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from edgefleet.adaptive.plan import DevicePlan
from edgefleet.common.convert import batch_to_pb
from edgefleet.common.records import Record, SnapshotRecord
from edgefleet.v1 import agent_pb2, agent_pb2_grpc

from .controllers import Endpoint, same_controller, saved_controller
from .convert import (
    command_from_pb,
    config_status_to_pb,
    deployment_to_pb,
    health_to_pb,
    hello_to_pb,
    plan_to_pb,
    profile_to_pb,
    result_to_pb,
)
from .desired import ConfigStatus
from .engines import DeploymentStatus
from .errors import EnrollmentError, FetchError
from .health import HealthSample
from .identity import Identity, load_identity, save_identity
from .messages import Command, Hello
from .outbox import Outbox
from .replicas import Backoff, Replicas, connect, describe, first_set
from .sending import FRESH_MAX, Fresh, within_bytes

logger = logging.getLogger(__name__)

__all__ = ["AGENT_VERSION", "FRESH_MAX", "Link"]

AGENT_VERSION = "0.1.0"

IDLE_WAIT_S = 0.5
"""The publishing stream's longest sleep with nothing to send (commits, acks and stop wake it sooner)."""
LOST = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED})
"""Errors of the detection stream that mean the connection is gone, not only the stream: the link
moves on to another replica (the Session ending, however it ends, means so too)."""


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
    blocking FetchArtifact call for worker threads, on its own channel to the replica connected to.

    `committed(records)` hands over records the pipeline has just committed (any thread): the
    link sends them from memory when they follow on what it sent last, sparing the outbox a read
    and a JSON parse per record; after a reconnect, a gap or a backlog it reads the outbox. Records
    are of every kind (frames, object events, counts, snapshots), each batch under MAX_BATCH_BYTES
    (agent.sending).

    `controller` is the setting as AgentConfig keeps it (one HOST:PORT, or several comma-separated);
    `endpoint` is the replica the link is connected to now (None: none)."""

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
        self.replicas = Replicas(controller, backoff_max_s, credentials)
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
        self._fresh = Fresh()
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight
        self.backoff_max_s = backoff_max_s
        self.heartbeat_interval_s = 5.0
        self.identity: Identity | None = None
        self.fatal: Exception | None = None
        self.acked_sequence = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # The link's loop sleeps until one of these is set (from any thread, through `_call_soon`).
        # An asyncio.Event binds to the loop that first waits on it (Python >= 3.10), so they are
        # made here and the loop `start()` runs uses them:
        self._more = asyncio.Event()  # there may be records to send (a commit, an ack)
        self._queued = asyncio.Event()  # a message joined `_outgoing`
        self._stopping = asyncio.Event()  # stop was asked
        self._identity_path = state_dir / "identity.json"

    @property
    def connected(self) -> threading.Event:
        """Set while a replica has accepted the Session."""
        return self.replicas.connected

    @property
    def endpoint(self) -> Endpoint | None:
        """The replica connected to now (None: none)."""
        return self.replicas.endpoint

    @property
    def last_error(self) -> str:
        """Why the last connection was lost or the last attempt to connect failed ("" while connected)."""
        return self.replicas.last_error

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
        await first_set(seconds, self._stopping)
        return self._stop.is_set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._stop.is_set():  # asked before the loop ran: stop() found no loop to tell
            self._stopping.set()
        self.identity = self._load_identity()
        if self.identity is None and not self.enroll_key:
            raise EnrollmentError(f"not enrolled with {self.controller} and no --enroll-key given")
        outbox = Outbox(self.outbox_path, durable=False)  # its commits are acks (see Outbox)
        try:
            await self.replicas.run(lambda endpoint: self._connection(endpoint, outbox), self._wait_stop,
                                    self._stop.is_set)
        finally:
            outbox.close()

    # ---- connections, one replica at a time ----

    async def _connection(self, endpoint: Endpoint, outbox: Outbox) -> bool:
        """Connect to `endpoint`, enroll if need be, and run the streams until the connection is
        lost or stop; whether the Session was accepted on it."""
        replicas = self.replicas
        async with replicas.channel(endpoint, grpc.aio) as channel:
            state = await connect(channel, replicas.connect_wait_s, self._stopping)
            if state in ("timeout", "stopped"):
                if state == "timeout":
                    replicas.unreachable(str(endpoint), f"no connection within {replicas.connect_timeout_s:g} s")
                return False
            stub = agent_pb2_grpc.AgentGatewayStub(channel)
            try:
                if self.identity is None:
                    await self._enroll(stub, endpoint)
                return await self._streams(stub, outbox, endpoint)
            except grpc.aio.AioRpcError as err:
                replicas.unreachable(str(endpoint), describe(err))
                return False

    async def _streams(self, stub, outbox: Outbox, endpoint: Endpoint) -> bool:
        """Session first; once accepted, PublishDetections beside it, until either says the
        connection is lost or stop (then both close in order: a last heartbeat, pending acks)."""
        accepted, ended = asyncio.Event(), asyncio.Event()
        session = asyncio.create_task(self._session(stub, accepted, ended), name="session")
        await first_set(self.replicas.accept_timeout_s, accepted, ended, self._stopping)
        if not accepted.is_set():
            session.cancel()
            (result,) = await asyncio.gather(session, return_exceptions=True)
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result
            if not self._stop.is_set():
                self.replicas.unreachable(str(endpoint), result if isinstance(result, str) else
                                          f"the Session was not accepted within {self.replicas.accept_timeout_s:g} s")
            return False
        self.replicas.on_connected(endpoint)
        tasks = [session, asyncio.create_task(self._publish_forever(stub, outbox), name="publish")]
        stopping = asyncio.create_task(self._stopping.wait())
        await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        _, pending = await asyncio.wait(tasks, timeout=3.0 if self._stop.is_set() else 0)
        for task in pending:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result
        if not self._stop.is_set():
            self.replicas.on_lost(endpoint, next((r for r in results if isinstance(r, str)), "the connection ended"))
        return True

    # ---- enrollment ----

    def _load_identity(self) -> Identity | None:
        """The saved identity, when it was saved for a controller setting that shares an address
        with this one (replicas added or removed keep it)."""
        saved = saved_controller(self._identity_path)
        if saved is None or not same_controller(saved, self.replicas.rotation.addresses):
            return None
        return load_identity(self._identity_path, saved)

    def _save_identity(self, identity: Identity) -> None:
        save_identity(self._identity_path, identity)

    def hardware_id(self) -> str:
        try:
            machine_id = Path("/etc/machine-id").read_text().strip()
        except OSError:
            machine_id = socket.gethostname()
        # Several agents on one box (demo, multi-camera servers) are told apart by state dir.
        return f"{machine_id}:{self.state_dir.resolve()}"

    async def _enroll(self, stub, endpoint: Endpoint) -> None:
        """Enroll with the replica at `endpoint`; a refused key raises EnrollmentError, another
        error (the replica is away) grpc.aio.AioRpcError."""
        hello = self._hello()
        request = agent_pb2.EnrollRequest(
            enroll_key=self.enroll_key, hardware_id=self.hardware_id(), hostname=self.name,
            agent_version=AGENT_VERSION, profile=profile_to_pb(hello.profile), labels=hello.labels,
        )
        try:
            response = await stub.Enroll(request, timeout=10)
        except grpc.aio.AioRpcError as err:
            if err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT):
                raise EnrollmentError(f"enrollment refused by {endpoint} ({err.code().name}): {err.details()}") from err
            raise
        self.identity = Identity(response.device_id, response.device_token, self.controller,
                                 bytes(response.controller_public_key))
        self.heartbeat_interval_s = float(response.heartbeat_interval_s or self.heartbeat_interval_s)
        self._save_identity(self.identity)
        logger.info("enrolled as %s with %s", response.device_id, endpoint)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        if self.identity is None:  # the streams and fetches start after enrollment
            raise EnrollmentError("not enrolled yet: no device token to call the controller with")
        return (("authorization", f"Bearer {self.identity.token}"),)

    def _check_auth(self, err: grpc.aio.AioRpcError) -> None:
        if err.code() == grpc.StatusCode.UNAUTHENTICATED:
            self._identity_path.unlink(missing_ok=True)
            raise EnrollmentError(
                f"device token refused by {self.endpoint or self.controller} ({err.code().name}): {err.details()}; "
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
                await first_set(left, self._queued, self._stopping)
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

    async def _session(self, stub, accepted: asyncio.Event, ended: asyncio.Event) -> str | None:
        """One Session stream: sets `accepted` when the controller accepts it, `ended` when it ends;
        returns why it ended (None: stop). A refused token raises EnrollmentError."""
        try:
            call = stub.Session(self._session_messages(), metadata=self._metadata())
            async for message in call:
                kind = message.WhichOneof("body")
                if kind == "accepted":
                    self.heartbeat_interval_s = float(message.accepted.heartbeat_interval_s or 5)
                    accepted.set()
                    logger.info("session open as %s", message.accepted.device_id)
                elif kind == "command":
                    self._on_command(command_from_pb(message.command))  # the loop thread applies it
        except grpc.aio.AioRpcError as err:
            self._check_auth(err)
            return None if self._stop.is_set() else f"Session {describe(err)}"
        finally:
            ended.set()
        return None if self._stop.is_set() else "the controller ended the Session"

    # ---- messages from other threads, artifacts ----

    def send_deployment(self, status: DeploymentStatus) -> None:
        """Queue a deployment's status; any thread."""
        self._queue(agent_pb2.AgentMessage(deployment=deployment_to_pb(status)))

    def committed(self, records: list[Record]) -> None:
        """Records the pipeline has just committed to the outbox, in sequence order (any thread);
        [] forgets those handed over before (the outbox dropped records: read it instead)."""
        self._fresh.committed(records)
        self._call_soon(lambda: self._more.set())  # wake the publishing stream

    def _take_fresh(self, after: int) -> list[Record]:
        """Up to a batch of handed-over records continuing right after sequence `after`, or [] (then the
        outbox has them); only the link thread takes (agent.sending.Fresh)."""
        return self._fresh.take(after, self.batch_size)

    def send_config(self, status: ConfigStatus) -> None:
        """Queue a ConfigStatus (after an ApplyConfig); any thread."""
        self._queue(agent_pb2.AgentMessage(config=config_status_to_pb(status)))

    def send_result(self, command_id: str, ok: bool, error: str = "", detail: str = "",
                    snapshot: SnapshotRecord | None = None) -> None:
        """Queue a CommandResult (`error` why it was refused, `detail` what was done, `snapshot`
        CaptureFrame's picture); any thread."""
        self._queue(result_to_pb(command_id, ok, error, detail, snapshot))

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
        endpoint = self.replicas.first_endpoint()
        if endpoint is None:
            raise FetchError(f"no address of controller {self.controller} resolves")
        with self.replicas.channel(endpoint) as channel:
            stub = agent_pb2_grpc.AgentGatewayStub(channel)
            request = agent_pb2.FetchArtifactRequest(sha256=sha256, offset=offset, chunk_size=chunk_size)
            try:
                yield from stub.FetchArtifact(request, metadata=self._metadata(), timeout=timeout_s)
            except grpc.RpcError as err:
                raise FetchError(f"FetchArtifact {err.code().name}: {err.details()}",
                                 retryable=err.code() not in final) from err

    # ---- detections ----

    async def _publish_forever(self, stub, outbox: Outbox) -> str | None:
        """PublishDetections, reopened with backoff on this connection after errors that leave it
        up; returns why the connection is lost (LOST), or None on stop."""
        backoff = Backoff(maximum=self.backoff_max_s)
        while not self._stop.is_set():
            try:
                await self._publish_once(stub, outbox, backoff)
            except grpc.aio.AioRpcError as err:
                self._check_auth(err)
                if err.code() in LOST:
                    return None if self._stop.is_set() else f"PublishDetections {describe(err)}"
                logger.warning("detection stream: %s; reopening", describe(err))
            except (asyncio.InvalidStateError, grpc.aio.UsageError, asyncio.TimeoutError) as err:
                logger.warning("detection stream ended: %r; reopening", err)
            if await self._wait_stop(backoff.next_delay()):
                return None
        return None

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
                    await first_set(IDLE_WAIT_S, self._more)
                    continue
                after = max(sent, self.acked_sequence)
                self._more.clear()  # a commit from now on wakes the wait below
                records = self._take_fresh(after)
                if not records and (behind or self._fresh.forgot or self._fresh):  # (a gap at the memory's head)
                    self._fresh.forgot = False
                    records = outbox.pending(after_sequence=after, limit=self.batch_size)
                    fit = within_bytes(records)
                    behind = fit < len(records) or len(records) == self.batch_size
                    del records[fit:]
                if not records:
                    await first_set(IDLE_WAIT_S, self._more)
                    continue
                await call.write(batch_to_pb(records))
                sent = records[-1].sequence
                self.connected.set()
            await call.done_writing()
            await asyncio.wait_for(receiver, timeout=5.0)
        finally:
            receiver.cancel()
