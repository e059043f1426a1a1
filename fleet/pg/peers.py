"""`PgPeers`: controller replicas on one PostgreSQL database, talking through LISTEN/NOTIFY.

Each replica holds three connections of its own besides the store's pool:
- a listener (LISTEN on the `edgefleet` channel): peers' messages, handled in arrival order by
  `fleet.replicas.Replica`;
- a sender: its own messages (`pg_notify`) and its rows in `sessions`, in the order they were made,
  so a Session's opening reaches the others before the change that says the device connected;
- a lease connection: every second it beats (`replicas.last_beat`), reads which replicas are
  alive, and, while no replica leads, tries the leader lock (`pg_try_advisory_lock`). The lock is
  the connection's: when the leader dies its connection ends and the lock with it, and another
  replica takes it at its next beat. The leader drives rollout timeouts and retention.
A message too big for a notification (8,000 bytes) goes into the `relay` table, and the
notification carries its id. Messages sent while PostgreSQL is away are lost (a command then times
out; a fleet change shows at the next one); each connection comes back on its own.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ..replicas import Peers, Replica
from .base import redact

if TYPE_CHECKING:
    import psycopg

    from ..async_store import AsyncStore
    from ..detection_store import FrameRecord
    from ..hub import Command, Hub

logger = logging.getLogger(__name__)

CHANNEL = "edgefleet"
LEADER_LOCK = 0x6564_6765_666C_02
ROLLOUT_LOCK = 0x6564_6765_666C_03
BEAT_S = 1.0
ALIVE_S = 5.0
"""A replica that has not beaten for this long is gone: its Sessions no longer count."""
WATCHING_FRESH_S = 15.0
"""A replica says it watches detections every few beats; after this long unsaid, it no longer does."""
RECONNECT_S = 1.0
MAX_NOTIFY_BYTES = 7900
OUTBOX_SIZE = 10_000


KEEPALIVES: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
              "options": "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"}
"""TCP keepalives both ways: this replica notices a vanished server within ~11 s, and the server ends the
session of a vanished replica (a host gone without closing its connections) within ~25 s, and the
leader lock with it, instead of after the operating system's default of hours."""


async def connect(url: str) -> psycopg.AsyncConnection:
    import psycopg

    return await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=5, **KEEPALIVES)


class PgPeers(Peers):
    def __init__(self, url: str, replica_id: str | None = None) -> None:
        super().__init__(replica_id)
        self.leader = False
        self.url = url
        self.replica: Replica | None = None
        self._outbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(OUTBOX_SIZE)
        self._alive: set[str] = set()
        self._heard: dict[str, float] = {}
        self._touched: set[str] = set()  # devices whose routine changes the next beat tells
        self.dropped = 0  # messages that found the outbox full
        self._listening = asyncio.Event()
        self._lock_conn: psycopg.AsyncConnection | None = None
        self._tasks: list[asyncio.Task] = []
        self.started = time.time()

    async def start(self, hub: Hub, db: AsyncStore) -> None:
        self.replica = Replica(hub, db, self.replica_id)
        self._tasks = [asyncio.create_task(job(), name=f"replica-{job.__name__.strip('_')}")
                       for job in (self._listen, self._send, self._lease)]
        try:
            await asyncio.wait_for(self._listening.wait(), 10)
        except TimeoutError:
            logger.warning("replica %s is not listening to its peers yet (PostgreSQL at %s)", self.replica_id,
                           redact(self.url))
        logger.info("controller replica %s started (%s)", self.replica_id, self.address)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._lock_conn is not None:
            await self._lock_conn.close()
        if self.leader:
            await self._set_leader(False)
        with contextlib.suppress(Exception):  # leave the table tidy when the database is there
            conn = await connect(self.url)
            async with conn:
                await conn.execute("delete from sessions where replica_id = %s", [self.replica_id])
                await conn.execute("delete from replicas where replica_id = %s", [self.replica_id])

    # ---- what the Hub asks ----

    def session_of(self, device_id: str) -> str | None:
        replica = self.replica.sessions.get(device_id) if self.replica else None
        return replica if replica is not None and self._is_alive(replica) else None

    def _is_alive(self, replica_id: str) -> bool:
        return replica_id in self._alive or time.time() - self._heard.get(replica_id, 0.0) < ALIVE_S

    def session_opened(self, device_id: str) -> None:
        self._queue("sql", ("insert into sessions (device_id, replica_id, since) values (%s, %s, %s)"
                            " on conflict (device_id) do update set replica_id = excluded.replica_id,"
                            " since = excluded.since", [device_id, self.replica_id, time.time()]))
        self._post({"k": "session", "device_id": device_id, "open": True})

    def session_closed(self, device_id: str) -> None:
        self._queue("sql", ("delete from sessions where device_id = %s and replica_id = %s",
                            [device_id, self.replica_id]))
        self._post({"k": "session", "device_id": device_id, "open": False})

    def forward_command(self, replica_id: str, device_id: str, command: Command) -> None:
        self._post({"k": "cmd", "to": replica_id, "device_id": device_id, "action": command.action,
                    "payload": command.payload, "command_id": command.command_id})

    def forward_answer(self, replica_id: str, device_id: str, command_id: str, ok: bool, error: str,
                       detail: str) -> None:
        self._post({"k": "answer", "to": replica_id, "device_id": device_id, "command_id": command_id, "ok": ok,
                    "error": error, "detail": detail})

    def announce(self, kind: str, **fields: Any) -> None:
        self._post({"k": kind, **fields})

    def close_streams(self, device_id: str, reason: str) -> None:
        self._post({"k": "close", "device_id": device_id, "reason": reason})

    def frames_committed(self, device_id: str, frames: list[FrameRecord]) -> None:
        if self.replica is not None and self.replica.wants("detections", time.time(), WATCHING_FRESH_S):
            sequences = [f.sequence for f in frames]
            self._post({"k": "frames", "device_id": device_id, "first": min(sequences), "last": max(sequences)})

    def device_touched(self, device_id: str) -> None:
        if self.replica is not None and self.replica.wants("fleet", time.time(), WATCHING_FRESH_S):
            self._touched.add(device_id)

    def watching(self, topic: str, watching: bool) -> None:
        self._post({"k": "watching", "topic": topic, "watching": watching})

    @contextlib.asynccontextmanager
    async def lock(self) -> AsyncIterator[None]:
        async with self._lock:
            if self._lock_conn is None or self._lock_conn.closed:
                self._lock_conn = await connect(self.url)
            conn = self._lock_conn
            await conn.execute("select pg_advisory_lock(%s)", [ROLLOUT_LOCK])
            try:
                yield
            finally:
                try:
                    await conn.execute("select pg_advisory_unlock(%s)", [ROLLOUT_LOCK])
                except Exception:  # noqa: BLE001 - the lock ends with its connection
                    await conn.close()

    # ---- the connections ----

    def _post(self, message: dict) -> None:
        """Queue a message for the others; none when no other replica is alive (a replica that starts
        reads the sessions from the table, and says itself what it watches)."""
        if self._alive - {self.replica_id} or any(self._is_alive(r) for r in self._heard):
            self._queue("notify", {"from": self.replica_id, **message})

    def _queue(self, what: str, item: Any) -> None:
        try:
            self._outbox.put_nowait((what, item))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.error("replica %s: %d messages wait for PostgreSQL; %d dropped so far (this one a %s)",
                             self.replica_id, OUTBOX_SIZE, self.dropped, what)

    async def _send(self) -> None:
        item: tuple[str, Any] | None = None
        while True:
            try:
                async with await connect(self.url) as conn:
                    while True:
                        if item is None:
                            item = await self._outbox.get()
                        await self._send_one(conn, *item)
                        item = None
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - connection lost: the item is retried once it is back
                logger.warning("replica %s cannot reach PostgreSQL to send: %s", self.replica_id, err)
                await asyncio.sleep(RECONNECT_S)

    async def _send_one(self, conn: psycopg.AsyncConnection, what: str, item: Any) -> None:
        if what == "sql":
            await conn.execute(*item)
            return
        payload = json.dumps(item, separators=(",", ":"))
        if len(payload.encode()) > MAX_NOTIFY_BYTES:
            cursor = await conn.execute("insert into relay (body, created) values (%s, %s) returning id",
                                        [payload, time.time()])
            row = await cursor.fetchone()
            payload = json.dumps({"ref": row[0] if row else 0})
        await conn.execute("select pg_notify(%s, %s)", [CHANNEL, payload])

    async def _listen(self) -> None:
        while True:
            try:
                async with await connect(self.url) as conn, await connect(self.url) as reader:
                    await conn.execute(f"listen {CHANNEL}")
                    await self._load_sessions(reader)
                    self._listening.set()
                    async for notify in conn.notifies():
                        await self._handle(reader, notify.payload)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - connection lost: listen again once it is back
                self._listening.clear()
                logger.warning("replica %s stopped hearing its peers: %s", self.replica_id, err)
                await asyncio.sleep(RECONNECT_S)

    async def _handle(self, reader: psycopg.AsyncConnection, payload: str) -> None:
        assert self.replica is not None
        message = json.loads(payload)
        if "ref" in message:
            cursor = await reader.execute("select body from relay where id = %s", [message["ref"]])
            row = await cursor.fetchone()
            if row is None:
                logger.warning("replica %s: relayed message %s is gone", self.replica_id, message["ref"])
                return
            message = json.loads(row[0])
        sender = message.get("from")
        if sender:
            self._heard[sender] = time.time()
        try:
            await self.replica.handle(message)
        except Exception:  # noqa: BLE001 - one bad message must not stop the listener
            logger.exception("replica %s could not handle %s from %s", self.replica_id, message.get("k"), sender)

    async def _load_sessions(self, conn: psycopg.AsyncConnection) -> None:
        """Who holds which Session now, as the other replicas wrote it (a replica starting, or back)."""
        assert self.replica is not None
        cursor = await conn.execute(
            "select s.device_id, s.replica_id from sessions s join replicas r using (replica_id)"
            " where r.last_beat > %s and s.replica_id <> %s", [time.time() - ALIVE_S, self.replica_id])
        self.replica.sessions = dict(await cursor.fetchall())

    async def _lease(self) -> None:
        while True:
            try:
                async with await connect(self.url) as conn:
                    beats = 0
                    while True:
                        await self._beat(conn, beats)
                        beats += 1
                        await asyncio.sleep(BEAT_S)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - the lock went with the connection: lead no more
                logger.warning("replica %s lost its lease connection: %s", self.replica_id, err)
                if self.leader:
                    await self._set_leader(False)
                await asyncio.sleep(RECONNECT_S)

    async def _beat(self, conn: psycopg.AsyncConnection, beats: int) -> None:
        now = time.time()
        if not self.leader:
            cursor = await conn.execute("select pg_try_advisory_lock(%s)", [LEADER_LOCK])
            row = await cursor.fetchone()
            if row and row[0]:
                logger.info("replica %s leads: it drives rollout timeouts and retention", self.replica_id)
                await self._set_leader(True)
        await conn.execute(  # `leader` is for people and tests to read; the lock is what counts
            "insert into replicas (replica_id, address, started, last_beat, leader) values (%s, %s, %s, %s, %s)"
            " on conflict (replica_id) do update set last_beat = excluded.last_beat, leader = excluded.leader,"
            " address = excluded.address", [self.replica_id, self.address, self.started, now, self.leader])
        cursor = await conn.execute("select replica_id from replicas where last_beat > %s", [now - ALIVE_S])
        self._alive = {row[0] for row in await cursor.fetchall()}
        if self.leader and beats % 10 == 0:  # tidy up after replicas that died
            await conn.execute("delete from sessions where replica_id not in"
                               " (select replica_id from replicas where last_beat > %s)", [now - ALIVE_S])
            await conn.execute("delete from replicas where last_beat < %s", [now - 3600])
            await conn.execute("delete from relay where created < %s", [now - 60])
        if self._touched:
            self._post({"k": "devices", "ids": sorted(self._touched)})
            self._touched = set()
        if self.replica is not None and beats % 5 == 0:  # say it again: a replica started since must hear it
            for topic, watched in (("fleet", self.replica.hub.fleet.watched),
                                   ("detections", self.replica.hub.detections.watched)):
                if watched:
                    self.watching(topic, True)
