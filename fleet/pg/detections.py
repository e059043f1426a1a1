"""Detections: idempotent group-committed ingest, listings, day partitions (PostgreSQL).

The methods of the SQLite store's mixin of the same name (`fleet.detection_store.DetectionTables`), with
the same results and errors; the rows a batch makes and what it answers come from the same pure functions.

A group commit holds its devices' rows (`for no key update`, in one order, as every multi-device write
here does) until it commits. Two replicas storing batches of one device at once therefore take turns,
and the second reads the acked sequence the first left: a frame at or below it may be stored already,
so only those frames are looked up, and a replay is answered as duplicates, exactly as on SQLite. New
rows go in by one binary COPY: the fastest of the ways measured (for 1,000 frames, 25 % under COPY into a
temporary table then INSERT ... SELECT ... ON CONFLICT DO NOTHING, which was faster than multi-row VALUES,
unnest arrays or executemany in a pipeline). The primary key (device_id, sequence, capture_time) is the
backstop: a frame that meets a stored one anyway (its capture time is in the key, and a resent frame
carries the same) fails the COPY, and the group is committed again with every frame looked up and
inserted through the temporary table with `on conflict do nothing`.

`detections` is partitioned by the UTC day of capture time (fleet/pg/schema.py). `maintain_partitions`
makes the partitions from yesterday to a week ahead; the store calls it when it opens and retention
(`fleet.pg.history`) at each sweep, which also drops whole days once every frame in them has expired.
"""
from __future__ import annotations

import calendar
import logging
import re
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, NamedTuple

from edgefleet.common.records import FrameRecord, Record

from ..errors import InvalidArgument, NotFound
from ..frame_rows import DETECTION_COLUMNS, StoreResult, frame_from_row
from ..history_store import SQLITE_MAX_INT
from ..object_rows import ALL_FRAMES, FramePolicy, GroupWrites, ParsedBatch, parse_batch, take_batch
from .base import PgTables

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger(__name__)

DAY_S = 86_400
PARTITION_PREFIX = "detections_p"
PARTITIONS_BEHIND = 1
PARTITIONS_AHEAD = 7
"""Day partitions kept ready around today (UTC): a device clock off by more lands in `detections_default`."""
PARTITION_LOCK = 0x6564_6765_666C_44
"""pg_advisory_xact_lock key: one replica changes the day partitions at a time."""
DDL_LOCK_TIMEOUT = "2s"
"""How long making or dropping a partition waits for the table's lock (every ingest queues behind the
wait); past it the change is left for the next sweep."""
PARTITIONS_SQL = ("select c.relname from pg_inherits as i join pg_class as c on c.oid = i.inhrelid"
                  " where i.inhparent = 'detections'::regclass")
"""The names of the partitions of `detections`, the default one too."""
BY_DEVICE_ID = 'device_id collate "C"'
"""Device ids in SQLite's order (bytewise), whatever the database's collation."""

_STAGING = ("create temporary table detections_incoming (device_id text, sequence bigint, stream_id text,"
            " frame_index bigint, capture_time double precision, received double precision, n_objects integer,"
            " objects text) on commit delete rows")
_COPY = f"copy detections ({', '.join(DETECTION_COLUMNS)}) from stdin (format binary)"
_COPY_STAGED = f"copy detections_incoming ({', '.join(DETECTION_COLUMNS)}) from stdin (format binary)"
_COPY_TYPES = ("text", "int8", "text", "int8", "float8", "float8", "int4", "text")
_INSERT = (f"insert into detections ({', '.join(DETECTION_COLUMNS)}) select {', '.join(DETECTION_COLUMNS)}"
           " from detections_incoming on conflict do nothing")
_STAGED: weakref.WeakSet = weakref.WeakSet()
"""Pooled connections whose session has the staging table (a connection made anew has not)."""


EMPTY = ParsedBatch([], [])


class Batch(NamedTuple):
    """One device's batch in a group: its slot in the results, and its records (None: refused already)."""

    slot: int
    device_id: str
    rows: ParsedBatch | None


def partition_name(day: int) -> str:
    """`detections_pYYYYMMDD` of the UTC day that starts at `day` (unix seconds)."""
    return PARTITION_PREFIX + time.strftime("%Y%m%d", time.gmtime(day))


def partition_day(name: str) -> int | None:
    """The start (unix seconds) of the UTC day a day partition holds; None for another table's name."""
    found = re.fullmatch(rf"{PARTITION_PREFIX}(\d{{8}})", name)
    return calendar.timegm(time.strptime(found.group(1), "%Y%m%d")) if found else None


def day_partitions(conn_rows: Iterable[dict]) -> list[tuple[str, int]]:
    """(name, start of its day) of each day partition among rows of `PARTITIONS_SQL`, oldest first."""
    days = [(row["relname"], partition_day(row["relname"])) for row in conn_rows]
    return sorted(((name, day) for name, day in days if day is not None), key=lambda item: item[1])


def maintained_days(now: float) -> list[int]:
    """The starts of the days whose partitions `maintain_partitions(now)` keeps: yesterday to a week ahead."""
    today = int(now // DAY_S) * DAY_S
    return [today + k * DAY_S for k in range(-PARTITIONS_BEHIND, PARTITIONS_AHEAD + 1)]


def pg_parse_batch(device_id: str, records: list[Record], now: float, policy: FramePolicy) -> ParsedBatch:
    """`parse_batch`, and InvalidArgument for a frame's stream id PostgreSQL's text cannot hold (a NUL
    character; the other records' text is checked by `parse_batch` on both stores)."""
    for rec in records:
        if type(rec) is FrameRecord and "\x00" in rec.stream_id:
            raise InvalidArgument(f"frames[].stream_id must not contain NUL characters, got {rec.stream_id!r}")
    return parse_batch(device_id, records, now, policy)


def detection_filter(device_ids: Sequence[str], stream_id: str, since: float | None, until: float | None,
                     labels: Sequence[str]) -> tuple[str, list]:
    """The `where` clause (and its parameters) the listing methods share (`detection_store`'s, in PostgreSQL)."""
    where = "device_id = any(%s)"
    params: list = [list(device_ids)]
    if stream_id:
        where += " and stream_id = %s"
        params.append(stream_id)
    if since is not None:
        where += " and capture_time >= %s"
        params.append(since)
    if until is not None:
        where += " and capture_time < %s"
        params.append(until)
    if labels:  # the label is the third field of each stored object row (records.object_row)
        where += (" and exists (select 1 from json_array_elements(detections.objects::json) as o"
                  " where o ->> 2 = any(%s))")
        params.append(list(labels))
    return where, params


def sql_limit(limit: int) -> int | None:
    """A LIMIT as SQLite reads it: a negative one is none."""
    return limit if limit >= 0 else None


class PgDetectionTables(PgTables):
    """Methods `PgStore` gains."""

    def store_frames(self, device_id: str, frames: Sequence[Record]) -> StoreResult:
        """Commit a batch; idempotent on (device id, sequence). Acks the highest committed sequence."""
        (result,) = self.store_frames_many([(device_id, list(frames))])
        if isinstance(result, Exception):
            raise result
        return result

    frames_policy: FramePolicy = ALL_FRAMES
    """Which frames become rows of `detections` (`serve --store-frames`); the others are acked all the same."""

    def store_frames_many(
        self, batches: list[tuple[str, list[Record]]]
    ) -> list[StoreResult | InvalidArgument | NotFound]:
        """Commit many devices' batches in one transaction (`fleet.ingest`'s group commit).

        One result per batch, in order, as `DetectionTables.store_frames_many` answers: what `store_frames`
        would have returned for it alone, or the error it would have raised (NotFound before
        InvalidArgument). Should the shared transaction fail on a row's data, each batch is committed
        alone so only the culprit fails; a deadlock or serialization failure retries the group once.
        """
        import psycopg

        now = time.time()
        results: list = [None] * len(batches)
        group: list[Batch] = []
        for i, (device_id, records) in enumerate(batches):
            try:
                group.append(Batch(i, device_id, pg_parse_batch(device_id, records, now, self.frames_policy)))
            except InvalidArgument as err:
                results[i] = err
                group.append(Batch(i, device_id, None))
        try:
            self._commit_group(group, now, results)
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
            logger.warning("group commit of %d batches was rolled back; committing it again", len(group))
            self._commit_group(group, now, results)
        except (psycopg.DataError, psycopg.IntegrityError):
            if sum(batch.rows is not None for batch in group) <= 1:
                raise
            logger.warning("group commit of %d batches failed; committing them one by one", len(group), exc_info=True)
            for batch in group:
                try:
                    self._commit_group([batch], now, results)
                except (psycopg.DataError, psycopg.IntegrityError) as err:
                    results[batch.slot] = err
        return results

    def _commit_group(self, group: list[Batch], now: float, results: list) -> None:
        """One transaction for `group`; fills its slots in `results` once it committed."""
        import psycopg

        try:
            done = self._commit_once(group, now, look_up_all=False)
        except psycopg.errors.UniqueViolation:  # a new frame met a stored one its acked sequence did not cover
            logger.warning("a group of %d batches met stored frames; committing it again, every frame looked up",
                           len(group))
            done = self._commit_once(group, now, look_up_all=True)
        for i, result in done:
            results[i] = result

    def _commit_once(self, group: list[Batch], now: float, *, look_up_all: bool) -> list[tuple[int, object]]:
        """Lock the devices, find the replayed rows, insert the new ones, update the devices; each batch's answer.

        With `look_up_all` every row is looked up, not only those at or below their device's acked sequence,
        and a row stored all the same is skipped instead of failing the COPY."""
        with self.pool.connection() as conn:
            if look_up_all:
                self._stage(conn)
            with conn.transaction():
                acked = self._lock_devices(conn, {batch.device_id for batch in group})
                done: list[tuple[int, object]] = []
                valid: list[Batch] = []
                for batch in group:
                    if batch.device_id not in acked:
                        done.append((batch.slot, NotFound(f"device {batch.device_id!r} is not enrolled")))
                    elif batch.rows is not None:
                        valid.append(batch)
                present = self._stored_keys(conn, {
                    (batch.device_id, row[1]) for batch in valid for row in (batch.rows or EMPTY).frame_rows
                    if look_up_all or row[1] <= acked[batch.device_id]})
                writes = GroupWrites()
                for i, device_id, parsed in valid:
                    done.append((i, take_batch(device_id, parsed or EMPTY, acked, present, writes)))
                new_rows = writes.frame_rows
                inserted = self._insert_rows(conn, new_rows, skip_stored=look_up_all)
                if inserted != len(new_rows):  # never acknowledge a row as stored by this batch that was not
                    import psycopg

                    raise psycopg.IntegrityError(f"stored {inserted} of {len(new_rows)} new detection rows")
                self._write_objects(conn, writes, now)
                self._update_devices(conn, writes, acked, now)
        return done

    @staticmethod
    def _stage(conn: psycopg.Connection) -> None:
        """Create the connection's COPY staging table, once per session (outside any transaction, so that
        a group rolled back does not take it with it)."""
        if conn not in _STAGED:
            conn.execute(_STAGING)
            _STAGED.add(conn)

    @staticmethod
    def _lock_devices(conn: psycopg.Connection, device_ids: Iterable[str]) -> dict[str, int]:
        """Hold the devices' rows until the transaction ends; the acked sequence of each that exists."""
        rows = conn.execute(f"select device_id, acked_sequence from devices where device_id = any(%s)"
                            f" order by {BY_DEVICE_ID} for no key update", [sorted(device_ids)]).fetchall()
        return {device_id: int(acked or 0) for device_id, acked in rows}

    @staticmethod
    def _stored_keys(conn: psycopg.Connection, keys: set[tuple[str, int]]) -> set[tuple[str, int]]:
        """Which (device id, sequence) pairs the detections table holds already, in one query. Each pair is
        looked up on its own (a lateral subquery: an index probe per partition), never by scanning."""
        if not keys:
            return set()
        device_ids, sequences = zip(*keys)
        rows = conn.execute(
            "select k.device_id, k.sequence from unnest(%s::text[], %s::bigint[]) as k (device_id, sequence)"
            " cross join lateral (select 1 from detections as d where d.device_id = k.device_id"
            " and d.sequence = k.sequence limit 1) as found", [list(device_ids), list(sequences)]).fetchall()
        return {(device_id, int(sequence)) for device_id, sequence in rows}

    @staticmethod
    def _insert_rows(conn: psycopg.Connection, rows: list[tuple], *, skip_stored: bool) -> int:
        """COPY the rows into `detections`, or with `skip_stored` into the staging table and from there into
        `detections` skipping those stored already; how many went in."""
        if not rows:
            return 0
        with conn.cursor().copy(_COPY_STAGED if skip_stored else _COPY) as copy:
            copy.set_types(list(_COPY_TYPES))
            for row in rows:
                copy.write_row(row)
        return conn.execute(_INSERT).rowcount if skip_stored else len(rows)

    @staticmethod
    def _update_devices(conn: psycopg.Connection, writes: GroupWrites, acked: dict[str, int], now: float) -> None:
        if not writes.touched:
            return
        device_ids = sorted(writes.touched)
        conn.execute(
            "update devices set acked_sequence = greatest(devices.acked_sequence, v.acked),"
            " detections_stored = devices.detections_stored + v.stored,"
            " records_stored = devices.records_stored + v.records, last_seen = %s"
            " from unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[])"
            " as v (device_id, acked, stored, records)"
            " where devices.device_id = v.device_id",
            [now, device_ids, [acked[d] for d in device_ids], [writes.frames_stored.get(d, 0) for d in device_ids],
             [writes.records_stored.get(d, 0) for d in device_ids]])

    # ---- listings ----

    def list_detections(
        self, device_id: str, stream_id: str = "", after_sequence: int = 0, limit: int = 100,
        *, since: float | None = None, until: float | None = None, labels: Sequence[str] = (),
    ) -> tuple[list[FrameRecord], int]:
        """One device's records in sequence order: after `after_sequence`, or the newest `limit`
        (`DetectionTables.list_detections`)."""
        stored = self._stored_count(device_id)
        after_sequence = min(after_sequence, SQLITE_MAX_INT)  # no stored sequence is above it
        where, params = detection_filter([device_id], stream_id, since, until, labels)
        if after_sequence:
            query = f"select * from detections where {where} and sequence > %s order by sequence limit %s"
            params += [after_sequence, sql_limit(limit)]
        else:  # the newest `limit`, returned oldest first
            query = (f"select * from (select * from detections where {where} order by sequence desc limit %s)"
                     " as newest order by sequence")
            params.append(sql_limit(limit))
        return self._frames(query, params, labels), stored

    def _stored_count(self, device_id: str) -> int:
        """How many records the device stores; for a device removed without --purge-data, the records
        it left. NotFound when there is neither."""
        rows = self._rows("select detections_stored from devices where device_id = %s", [device_id])
        if rows:
            return int(rows[0]["detections_stored"] or 0)
        (left,) = self._rows("select count(*) as n from detections where device_id = %s", [device_id])
        if not left["n"]:
            raise NotFound(f"device {device_id!r} is not enrolled")
        return int(left["n"])

    def list_detections_of(
        self, device_ids: Sequence[str], stream_id: str = "", limit: int = 100,
        *, since: float | None = None, until: float | None = None, labels: Sequence[str] = (),
    ) -> tuple[list[FrameRecord], int]:
        """The newest `limit` records of several devices, oldest first by capture time, and how many the
        devices store in all (`DetectionTables.list_detections_of`)."""
        if not device_ids:
            return [], 0
        where, params = detection_filter(device_ids, stream_id, since, until, labels)
        query = (f"select * from (select * from detections where {where}"
                 f" order by capture_time desc, {BY_DEVICE_ID}, sequence desc limit %s) as newest"
                 f" order by capture_time, {BY_DEVICE_ID}, sequence")
        frames = self._frames(query, [*params, sql_limit(limit)], labels)
        (total,) = self._rows("select coalesce(sum(detections_stored), 0) as n from devices where device_id = any(%s)",
                              [list(device_ids)])
        return frames, int(total["n"])

    def _frames(self, query: str, params: list, labels: Sequence[str]) -> list[FrameRecord]:
        frames = [frame_from_row(row) for row in self._rows(query, params)]
        if labels:
            wanted = set(labels)
            frames = [replace(f, objects=[o for o in f.objects if o.label in wanted]) for f in frames]
        return frames

    # ---- day partitions ----

    def maintain_partitions(self, now: float | None = None) -> list[str]:
        """Create the day partitions of `detections` from yesterday to a week ahead (UTC days around `now`)
        that are missing; the names it created.

        Idempotent, and replicas running it at once take turns (an advisory lock). A day whose frames are
        in `detections_default` already (a device clock that ran ahead) gets no partition: it is logged and
        skipped, those frames stay where they are. A partition that cannot have the table's lock within
        `DDL_LOCK_TIMEOUT` is left for the next call."""
        import psycopg
        from psycopg import sql

        now = time.time() if now is None else now
        wanted = {partition_name(day): day for day in maintained_days(now)}
        if set(wanted) <= self._partition_names():
            return []
        created: list[str] = []
        with self._tx() as conn:
            conn.execute("select pg_advisory_xact_lock(%s)", [PARTITION_LOCK])
            conn.execute(f"set local lock_timeout = '{DDL_LOCK_TIMEOUT}'")
            existing = self._partition_names(conn)
            for name, day in sorted(wanted.items()):
                if name in existing:
                    continue
                statement = sql.SQL("create table {} partition of detections for values from ({}) to ({})").format(
                    sql.Identifier(name), sql.Literal(day), sql.Literal(day + DAY_S))
                try:
                    with conn.transaction():  # a savepoint: a refused day leaves the others to be made
                        conn.execute(statement)
                except psycopg.errors.CheckViolation:
                    logger.warning("no partition %s: detections_default holds frames captured that day", name)
                    continue
                except psycopg.errors.LockNotAvailable:
                    logger.warning("partition %s not made: the detections table stayed busy for %s; next time",
                                   name, DDL_LOCK_TIMEOUT)
                    break
                created.append(name)
        if created:
            logger.info("made detections partitions %s", ", ".join(created))
        return created

    def _partition_names(self, conn: psycopg.Connection | None = None) -> set[str]:
        """The names of the day partitions `detections` has."""
        return {name for name, _ in day_partitions(self._rows(PARTITIONS_SQL, [], conn))}
