"""The durable outbox: every record (a frame's detections, an object event, counts, a snapshot) is
committed here before it counts as produced.

Sequences are assigned here, per device, from 1, and never reused (AUTOINCREMENT keeps
counting after deletes). Rows leave only when the controller acknowledges a sequence it
committed. One Outbox object per thread: the pipeline appends, the link reads and acks.

The outbox is bounded (`max_bytes`, `max_age_s`) so that a controller away for weeks cannot
fill the device's disk: each commit that takes it past a bound deletes the oldest records first,
in the same transaction, and counts them (`dropped`, and `dropped_total()` across runs). The
cost of a commit stays proportional to what it drops, never to what the outbox holds: the byte
total is kept by triggers in `outbox_meta`, and the oldest rows are found by their sequence.

Each row has a `kind`: "frame" rows keep their objects as JSON (`objects`), the other kinds
("object", "counts", "snapshot") keep their protobuf message serialized (`payload`, converted by
common.convert), so that `pending()` gives back `Record`s of the kind that went in. Outbox files
written before the other kinds existed get the two columns on open (every old row is a frame).
"""
from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgefleet.common.convert import (
    count_row_from_pb,
    count_row_to_pb,
    object_from_pb,
    object_to_pb,
    snapshot_from_pb,
    snapshot_to_pb,
)
from edgefleet.common.records import (
    CountRecord,
    FrameRecord,
    ObjectEventRecord,
    ObjectRecord,
    Record,
    SnapshotRecord,
    object_row,
    objects_from_json,
)
from edgefleet.v1 import agent_pb2

logger = logging.getLogger(__name__)

RECORD_OVERHEAD_BYTES = 64
"""What a record costs besides its stream id and objects (sequence, frame index, time, row and
index bookkeeping), in the byte count `max_bytes` bounds."""

_RECORD_BYTES = ("length(cast({r}.objects as blob)) + length(cast({r}.stream_id as blob)) + "
                 "coalesce(length({r}.payload), 0) + " + str(RECORD_OVERHEAD_BYTES))
"""SQL for one record's bytes; `{r}` is the row's alias (outbox, new, old)."""

DROP_WARNING_EVERY_S = 60.0
"""A full outbox drops on every commit; the warning that says so is logged at most this often."""


OutboxRecord = FrameRecord
"""The agent's name for a frame's record (its `sequence` is assigned here, its `device_id` stays empty)."""
OutboxObject = ObjectRecord

KINDS: dict[type, str] = {FrameRecord: "frame", ObjectEventRecord: "object", CountRecord: "counts",
                          SnapshotRecord: "snapshot"}
"""Each record type's `kind` in the outbox."""


class Outbox:
    """`max_bytes` bounds the records' bytes (payload plus RECORD_OVERHEAD_BYTES each; not the file's
    size, which SQLite keeps as freed pages are reused), `max_age_s` their age by capture time
    (`clock()` seconds, unix time); 0 leaves either unbounded. Only the appending side enforces them.

    `durable=False` is for the link's side: its commits (acks) skip the fsync. An ack lost to a
    power cut only means the record is sent again, and the controller, which has it, acknowledges
    it again without storing it twice; the appending side's next commit syncs the log anyway."""

    def __init__(self, path: Path | str, max_bytes: int = 0, max_age_s: float = 0.0,
                 clock: Callable[[], float] = time.time, durable: bool = True):
        if max_bytes < 0 or max_age_s < 0:
            raise ValueError(f"outbox bounds must be >= 0, got max_bytes={max_bytes}, max_age_s={max_age_s}")
        self.path = Path(path)
        self.max_bytes, self.max_age_s, self._clock = int(max_bytes), float(max_age_s), clock
        self.dropped = 0
        """Records this object dropped to stay within its bounds."""
        self._unwarned = 0
        self._last_warning = float("-inf")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # used by one thread at a time, not always the one that opened it (OutboxWriter)
        self._conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=10.0, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # a committed record survives power loss
        self._conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._conn.execute("begin immediate")  # the pipeline and the link open the same file at once
        try:
            self._conn.execute(
                "create table if not exists outbox ("
                " sequence integer primary key autoincrement, stream_id text not null,"
                " frame_index integer not null, capture_time real not null, objects text not null,"
                " kind text not null default 'frame', payload blob)"
            )
            self._add_kinds()
            self._conn.execute("create table if not exists outbox_meta (key text primary key, value integer not null)")
            # Outboxes written before the bounds existed: count what they hold, once.
            self._conn.execute(
                "insert or ignore into outbox_meta (key, value)"
                f" select 'bytes', coalesce(sum({_RECORD_BYTES.format(r='outbox')}), 0) from outbox")
            self._conn.execute("insert or ignore into outbox_meta (key, value) values ('dropped', 0)")
            self._conn.execute(
                "create trigger if not exists outbox_bytes_insert after insert on outbox begin"
                f" update outbox_meta set value = value + {_RECORD_BYTES.format(r='new')} where key = 'bytes'; end")
            self._conn.execute(
                "create trigger if not exists outbox_bytes_delete after delete on outbox begin"
                f" update outbox_meta set value = value - ({_RECORD_BYTES.format(r='old')}) where key = 'bytes'; end")
            self._conn.execute("commit")
        except BaseException:
            self._conn.execute("rollback")
            raise

    def _add_kinds(self) -> None:
        """An outbox from before the other record kinds: add `kind` and `payload` (every row it holds is
        a frame, with no payload) and make the byte triggers count payloads (inside the open's transaction)."""
        columns = {row[1] for row in self._conn.execute("pragma table_info(outbox)")}
        if "kind" in columns:
            return
        self._conn.execute("alter table outbox add column kind text not null default 'frame'")
        self._conn.execute("alter table outbox add column payload blob")
        self._conn.execute("drop trigger if exists outbox_bytes_insert")
        self._conn.execute("drop trigger if exists outbox_bytes_delete")

    def close(self) -> None:
        if self.dropped:
            logger.warning("outbox %s: dropped %d record(s) in all to stay within its bounds (%s)",
                           self.path, self.dropped, self.describe_bounds())
        self._conn.close()

    def append(self, record: Record) -> int:
        return self.append_many([record])[0]

    def append_many(self, records: list[Record]) -> list[int]:
        """Commit several records in one transaction (one fsync); returns their sequences, which
        are also set on the records, whose scores and boxes are rounded in place to what is stored
        (so a record sent from memory equals the copy a resend reads back).

        Past a bound, the oldest records are dropped in the same transaction; a record larger than
        `max_bytes` on its own (a snapshot in a tiny outbox) is dropped alone, never at the cost of
        everything before it; `self.dropped` counts them."""
        self._conn.execute("begin immediate")
        try:
            sequences = [self._insert(record) for record in records]
            dropped = self._drop_oversized(sequences[0]) if sequences and self.max_bytes else 0
            dropped += self._enforce_bounds()
            self._conn.execute("commit")
        except BaseException:
            self._conn.execute("rollback")
            raise
        if dropped:
            self._note_dropped(dropped)
        return sequences

    def _drop_oversized(self, first: int) -> int:
        """Delete the records of this commit (sequences from `first`) that alone exceed `max_bytes`; how many."""
        size = _RECORD_BYTES.format(r="outbox")
        dropped = self._conn.execute(f"delete from outbox where sequence >= ? and {size} > ?",
                                     (first, self.max_bytes)).rowcount
        if dropped:
            self._conn.execute("update outbox_meta set value = value + ? where key = 'dropped'", (dropped,))
        return dropped

    def _enforce_bounds(self) -> int:
        """Delete the oldest records past either bound (inside the caller's transaction); how many."""
        cutoff = self._expired_cutoff() if self.max_age_s else 0  # delete every sequence <= cutoff
        if self.max_bytes:
            cutoff = self._oversize_cutoff(cutoff)
        if not cutoff:
            return 0
        dropped = self._conn.execute("delete from outbox where sequence <= ?", (cutoff,)).rowcount
        self._conn.execute("update outbox_meta set value = value + ? where key = 'dropped'", (dropped,))
        return dropped

    def _expired_cutoff(self) -> int:
        """The newest sequence captured more than `max_age_s` ago, or 0 if none was."""
        cutoff = 0
        expired_before = self._clock() - self.max_age_s
        if self._oldest_capture_time() >= expired_before:
            return 0
        while True:
            rows = self._conn.execute(
                "select sequence, capture_time from outbox where sequence > ? order by sequence limit 256",
                (cutoff,)).fetchall()
            fresh = next((i for i, (_, captured) in enumerate(rows) if captured >= expired_before), None)
            if fresh is not None:
                return rows[fresh - 1][0] if fresh else cutoff
            if not rows:
                return cutoff
            cutoff = rows[-1][0]

    def _oversize_cutoff(self, cutoff: int) -> int:
        """The sequence up to which records must go (`cutoff` at least) to bring the bytes under `max_bytes`."""
        excess = self.size_bytes() - self.max_bytes
        if cutoff and excess > 0:
            excess -= self._conn.execute(
                f"select coalesce(sum({_RECORD_BYTES.format(r='outbox')}), 0) from outbox where sequence <= ?",
                (cutoff,)).fetchone()[0]
        while excess > 0:
            rows = self._conn.execute(
                f"select sequence, {_RECORD_BYTES.format(r='outbox')} from outbox"
                " where sequence > ? order by sequence limit 256", (cutoff,)).fetchall()
            if not rows:
                break
            for sequence, size in rows:
                cutoff, excess = sequence, excess - size
                if excess <= 0:
                    break
        return cutoff

    def _oldest_capture_time(self) -> float:
        """The capture time of the oldest record (a single row: most commits expire nothing)."""
        row = self._conn.execute("select capture_time from outbox order by sequence limit 1").fetchone()
        return float("inf") if row is None else row[0]

    def _note_dropped(self, dropped: int) -> None:
        self.dropped += dropped
        self._unwarned += dropped
        now = time.monotonic()
        if now - self._last_warning >= DROP_WARNING_EVERY_S:
            logger.warning(
                "outbox %s is full (bounds: %s): dropped the %d oldest unacknowledged record(s), %d since start",
                self.path, self.describe_bounds(), self._unwarned, self.dropped)
            self._last_warning, self._unwarned = now, 0

    def describe_bounds(self) -> str:
        bounds = [f"{self.max_bytes / 1e6:g} MB" if self.max_bytes else "",
                  f"{self.max_age_s:g} s old" if self.max_age_s else ""]
        return ", ".join(b for b in bounds if b) or "none"

    def _insert(self, record: Record) -> int:
        objects, frame_index, payload = "", 0, None
        if isinstance(record, FrameRecord):
            for o in record.objects:
                x1, y1, x2, y2 = (round(float(v), 2) for v in o.xyxy)
                o.score, o.xyxy = round(float(o.score), 5), (x1, y1, x2, y2)
            objects, frame_index = json.dumps([object_row(o) for o in record.objects]), record.frame_index
        else:
            payload = payload_of(record)
        cursor = self._conn.execute(
            "insert into outbox (stream_id, frame_index, capture_time, objects, kind, payload)"
            " values (?, ?, ?, ?, ?, ?)",
            (record.stream_id, frame_index, record.capture_time, objects, KINDS[type(record)], payload),
        )
        assert cursor.lastrowid is not None  # an INSERT sets it
        record.sequence = cursor.lastrowid
        return record.sequence

    def pending(self, after_sequence: int = 0, limit: int = 64) -> list[Record]:
        """Up to `limit` records after `after_sequence`, in sequence order, each of the type it went in as."""
        rows = self._conn.execute(
            "select sequence, stream_id, frame_index, capture_time, objects, kind, payload from outbox"
            " where sequence > ? order by sequence limit ?",
            (after_sequence, limit),
        ).fetchall()
        return [FrameRecord(stream_id, seq, frame_index, capture_time, objects_from_json(objs)) if kind == "frame"
                else record_of(kind, payload, seq)
                for seq, stream_id, frame_index, capture_time, objs, kind, payload in rows]

    def ack(self, upto_sequence: int) -> int:
        """Forget everything the controller has committed; returns how many rows left."""
        return self._conn.execute("delete from outbox where sequence <= ?", (upto_sequence,)).rowcount

    def depth(self) -> int:
        return self._conn.execute("select count(*) from outbox").fetchone()[0]

    def last_sequence(self) -> int:
        row = self._conn.execute("select seq from sqlite_sequence where name = 'outbox'").fetchone()
        return row[0] if row else 0

    def size_bytes(self) -> int:
        """The records' bytes as `max_bytes` counts them."""
        return self._conn.execute("select value from outbox_meta where key = 'bytes'").fetchone()[0]

    def dropped_total(self) -> int:
        """Records dropped to stay within the bounds since this outbox file was made (all runs)."""
        return self._conn.execute("select value from outbox_meta where key = 'dropped'").fetchone()[0]


class OutboxWriter:
    """Commits the pipeline's records on its own thread, so the detect loop never waits on an
    fsync (about a millisecond here, tens of milliseconds on an SD card).

    `put(records)` hands a group over; groups that arrive while a commit runs go together into
    the next one. After each commit, still on the writer thread, `on_committed(records, dropped)`
    gets the committed records and how many the outbox dropped in that commit to stay within its
    bounds. `flush()` returns once everything handed over is committed. An error on the writer
    thread (a full disk) stops it, and the next `put()` or `flush()` raises it. While the writer
    runs, only it uses `outbox`."""

    def __init__(self, outbox: Outbox, on_committed: Callable[[list[Record], int], None]):
        self.outbox = outbox
        self._on_committed = on_committed
        self._queue: queue.SimpleQueue[list[Record] | threading.Event | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="outbox-writer", daemon=True)
        self._thread.start()

    def put(self, records: list[Record]) -> None:
        self._raise_error()
        self._queue.put(records)

    def flush(self) -> None:
        done = threading.Event()
        self._queue.put(done)
        done.wait()
        self._raise_error()

    def close(self) -> None:
        """Commit what is left and end the thread."""
        self._queue.put(None)
        self._thread.join()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        stop = False
        while not stop:
            records: list[Record] = []
            flushed: list[threading.Event] = []
            item = self._queue.get()
            while True:  # everything queued meanwhile joins this commit
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    flushed.append(item)
                else:
                    records += item
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if records and self._error is None:
                try:
                    dropped_before = self.outbox.dropped
                    self.outbox.append_many(records)
                    self._on_committed(records, self.outbox.dropped - dropped_before)
                except BaseException as err:  # noqa: BLE001 - raised on the pipeline's thread
                    self._error = err
            for event in flushed:
                event.set()


def payload_of(record: ObjectEventRecord | CountRecord | SnapshotRecord) -> bytes:
    """A record other than a frame as its serialized message (its sequence left out: the row has it)."""
    if isinstance(record, ObjectEventRecord):
        return agent_pb2.ObjectEvent(type=record.type, object=object_to_pb(record.object)).SerializeToString()
    if isinstance(record, CountRecord):
        return agent_pb2.CountBatch(rows=[count_row_to_pb(r) for r in record.rows]).SerializeToString()
    return agent_pb2.SnapshotRecord(snapshot=snapshot_to_pb(record)).SerializeToString()


def record_of(kind: str, payload: bytes, sequence: int) -> Record:
    """The record a row of `kind` keeps in `payload` (`payload_of`), with its sequence."""
    if kind == "object":
        event = agent_pb2.ObjectEvent.FromString(payload)
        return ObjectEventRecord(event.type, object_from_pb(event.object), sequence)
    if kind == "counts":
        return CountRecord([count_row_from_pb(r) for r in agent_pb2.CountBatch.FromString(payload).rows], sequence)
    if kind == "snapshot":
        return snapshot_from_pb(agent_pb2.SnapshotRecord.FromString(payload).snapshot, sequence)
    raise ValueError(f"outbox row {sequence}: unknown kind {kind!r}")
