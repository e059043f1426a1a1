"""Objects, counts and snapshots on SQLite: what the group commit writes besides frames, what ListObjects,
CountObjects and GetSnapshot read, and what retention deletes.

A mixin of `FleetStore` (same connection, same single thread). `DetectionTables._commit_frames` calls
`_write_objects` inside its transaction, with the rows `fleet.object_rows` gathered. The queries are built
by `object_sql` / `count_sql` here, in either dialect (`SQLITE`, and `fleet.pg.objects`' `POSTGRES`), so both
stores answer the same questions the same way (`fleet.object_queries`).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from edgefleet.common.records import SnapshotRecord, TrackedObject

from .errors import InvalidArgument, NotFound
from .object_queries import BUCKETS, CountBucketRow, CountQuery, ObjectQuery
from .object_rows import (
    COUNT_KEY,
    OBJECT_COLUMNS,
    SNAPSHOT_COLUMNS,
    SNAPSHOT_KINDS,
    GroupWrites,
    object_from_row,
    upsert_assignments,
)
from .tables import StoreTables

UNREFERENCED_GRACE_S = 3600.0
"""A picture no object refers to goes once it was last stored longer ago than this: a picture being stored
again right now (its row's `created` is bumped) is never taken away under it."""


@dataclass(frozen=True)
class Dialect:
    """What differs between SQLite and PostgreSQL in these queries."""

    mark: str
    """The parameter placeholder."""
    has: str
    """`{column}` (JSON text array of strings) holds the parameter."""
    by_id: str
    """An id column in bytewise order ({column})."""

    def any_of(self, column: str, values: Sequence[str]) -> tuple[str, list]:
        if self.mark == "?":
            return f"{column} in ({', '.join('?' * len(values))})", list(values)
        return f"{column} = any(%s)", [list(values)]


SQLITE = Dialect("?", "exists (select 1 from json_each({column}) where value = ?)", "{column}")


def object_sql(query: ObjectQuery, dialect: Dialect) -> tuple[str, list]:
    """The select that answers `query` (columns of `objects` and `snapshot`, whether a picture of it is stored)."""
    m = dialect.mark
    where, params = ["true"], []
    if query.device_ids is not None:
        clause, values = dialect.any_of("o.device_id", query.device_ids)
        where.append(clause)
        params += values
    for column, value in (("o.stream_id", query.stream_id), ("o.label", query.label)):
        if value:
            where.append(f"{column} = {m}")
            params.append(value)
    for column, value in (("o.zones", query.zone), ("o.lines", query.line)):
        if value:
            where.append(dialect.has.format(column=column))
            params.append(value)
    if query.since is not None:
        where.append(f"o.last_seen >= {m}")
        params.append(query.since)
    if query.until is not None:
        where.append(f"o.first_seen < {m}")
        params.append(query.until)
    if query.active:
        where.append("o.ended = 0")
    device, obj = dialect.by_id.format(column="o.device_id"), dialect.by_id.format(column="o.object_id")
    if query.after is not None:
        where.append(f"(o.last_seen < {m} or (o.last_seen = {m} and ({device}, {obj}) > ({m}, {m})))")
        params += [query.after.last_seen, query.after.last_seen, query.after.device_id, query.after.object_id]
    sql = ("select o.*, exists (select 1 from object_snapshots as s where s.device_id = o.device_id"
           " and s.object_id = o.object_id) as snapshot from objects as o"
           f" where {' and '.join(where)} order by o.last_seen desc, {device}, {obj} limit {m}")
    return sql, [*params, max(query.limit, 0)]


def count_sql(query: CountQuery, dialect: Dialect) -> tuple[str, list, list[str]]:
    """The select that answers `query`, its parameters, and the names of its group columns before `kind`."""
    if query.bucket not in BUCKETS:
        raise InvalidArgument(f"bucket must be one of {', '.join(repr(b) for b in BUCKETS)}, got {query.bucket!r}")
    m = dialect.mark
    where, params = ["true"], []
    if query.device_ids is not None:
        clause, values = dialect.any_of("device_id", query.device_ids)
        where.append(clause)
        params += values
    for column in ("stream_id", "kind", "name", "label", "direction"):
        if value := getattr(query, column):
            where.append(f"{column} = {m}")
            params.append(value)
    if query.since is not None:
        where.append(f"minute >= {m}")
        params.append(query.since)
    if query.until is not None:
        where.append(f"minute < {m}")
        params.append(query.until)
    groups: list[str] = []
    width = BUCKETS[query.bucket]
    if width:
        groups.append(f"(minute / {width}) * {width}")  # integers: floor for the minutes >= 0 stored
    if query.by_device:
        groups.append(dialect.by_id.format(column="device_id"))
    if query.by_stream:
        groups.append(dialect.by_id.format(column="stream_id"))
    keys = [*groups, "kind", "name", "label", "direction"]
    sql = (f"select {', '.join(keys)}, sum(count) as total from object_counts where {' and '.join(where)}"
           f" group by {', '.join(keys)} order by {', '.join(keys)}")
    return sql, params, ["start"] * bool(width) + ["device_id"] * query.by_device + ["stream_id"] * query.by_stream


def bucket_rows(rows: Sequence[Sequence], groups: list[str]) -> list[CountBucketRow]:
    """The rows of `count_sql`'s select as CountBucketRows."""
    answer = []
    for row in rows:
        named = dict(zip(groups, row))
        kind, name, label, direction, total = row[len(groups):]
        start = named.get("start")
        answer.append(CountBucketRow(None if start is None else float(start), named.get("device_id", ""),
                                     named.get("stream_id", ""), kind, name, label, direction, int(total)))
    return answer


def check_snapshot_kind(kind: str) -> None:
    if kind not in SNAPSHOT_KINDS:
        raise InvalidArgument(f"snapshot kind must be one of {', '.join(SNAPSHOT_KINDS)}, got {kind!r}")


def snapshot_answer(rows: list[dict], object_id: str, kind: str, device_id: str,
                    devices: set[str], object_known: bool) -> SnapshotRecord:
    """GetSnapshot's answer from the object's pictures of `kind` (newest first; `devices`: the devices
    that know an object of that id), or the error naming what is missing."""
    if not device_id and len(devices) > 1:
        raise InvalidArgument(f"object {object_id!r} is known on {len(devices)} devices ({', '.join(sorted(devices))}):"
                              " name the device")
    on = f" on device {device_id!r}" if device_id else ""
    if not rows:
        if object_known:
            raise NotFound(f"object {object_id!r}{on} has no {kind!r} snapshot stored")
        raise NotFound(f"object {object_id!r}{on} is not stored")
    row = rows[0]
    return SnapshotRecord(row["stream_id"] or "", object_id, kind, row["label"] or "", row["time"], bytes(row["jpeg"]),
                          row["score"] or 0.0, 0, row["device_id"])


PICTURES_SQL = ("select s.device_id, s.stream_id, s.label, s.time, s.score, b.jpeg from object_snapshots as s"
                " join snapshots as b on b.sha256 = s.sha256 where s.object_id = {m} and s.kind = {m}{device}"
                " order by s.time desc, s.sha256 limit 1")
UNREFERENCED_SQL = ("delete from snapshots where created < {m} and sha256 in (select b.sha256 from snapshots as b"
                    " where b.created < {m} and not exists (select 1 from object_snapshots as s"
                    " where s.sha256 = b.sha256) limit {m})")
"""Stored JPEGs no picture refers to and not stored again within the grace (the outer `created` test is
checked again by PostgreSQL on a row an ingest just touched)."""
OWNERS_SQL = ("select device_id from objects where object_id = {m} union"
              " select device_id from object_snapshots where object_id = {m}")


class ObjectTables(StoreTables):
    """Methods `FleetStore` gains."""

    def _write_objects(self, writes: GroupWrites, now: float) -> None:
        """Write the group's objects, counts and pictures, inside the group commit's transaction: one
        statement per chunk of each (each SQLite step hands the GIL away)."""
        conn = self.db.conn
        upsert = upsert_assignments("excluded.last_seen >= objects.last_seen", "max")
        for chunk, marks in _chunks(writes.object_rows(now), len(OBJECT_COLUMNS)):
            conn.execute(f"insert into objects ({', '.join(OBJECT_COLUMNS)}) values {marks}"
                         f" on conflict (device_id, object_id) do update set {upsert}", chunk)
        for chunk, marks in _chunks(writes.count_rows(), len(COUNT_KEY) + 1):
            conn.execute(f"insert into object_counts ({', '.join(COUNT_KEY)}, count) values {marks}"
                         f" on conflict ({', '.join(COUNT_KEY)}) do update set count = count + excluded.count", chunk)
        for chunk, marks in _chunks(writes.snapshot_rows(now), 4):
            conn.execute(f"insert into snapshots (sha256, jpeg, size, created) values {marks}"
                         " on conflict (sha256) do update set created = excluded.created", chunk)
        for chunk, marks in _chunks(list(writes.pictures.values()), len(SNAPSHOT_COLUMNS)):
            conn.execute(f"insert or ignore into object_snapshots ({', '.join(SNAPSHOT_COLUMNS)}) values {marks}",
                         chunk)

    def list_objects(self, query: ObjectQuery) -> list[TrackedObject]:
        """ListObjects: newest first by last seen, then device id and object id; `query.after` pages on."""
        if query.device_ids is not None and not query.device_ids:
            return []
        sql, params = object_sql(query, SQLITE)
        cursor = self.db.execute(sql, params)
        columns = [c[0] for c in cursor.description]
        return [object_from_row(dict(zip(columns, row))) for row in cursor.fetchall()]

    def count_objects(self, query: CountQuery) -> list[CountBucketRow]:
        """CountObjects: the counts summed per bucket (UTC) and group, in bucket then group order."""
        if query.device_ids is not None and not query.device_ids:
            return []
        sql, params, groups = count_sql(query, SQLITE)
        return bucket_rows(self.db.execute(sql, params).fetchall(), groups)

    def get_snapshot(self, object_id: str, kind: str = "crop", device_id: str = "") -> SnapshotRecord:
        """GetSnapshot: the object's newest picture of `kind`. InvalidArgument when several devices have an
        object of that id and `device_id` is empty; NotFound naming the object or the picture missing."""
        check_snapshot_kind(kind)
        devices = {d for (d,) in self.db.execute(OWNERS_SQL.format(m="?"), [object_id, object_id]).fetchall()}
        if not device_id and len(devices) == 1:
            device_id = next(iter(devices))
        params = [object_id, kind] + [device_id] * bool(device_id)
        cursor = self.db.execute(PICTURES_SQL.format(m="?", device=" and s.device_id = ?" * bool(device_id)), params)
        columns = [c[0] for c in cursor.description]
        rows = [dict(zip(columns, row)) for row in cursor.fetchall()]
        known = device_id in devices if device_id else bool(devices)
        return snapshot_answer(rows, object_id, kind, device_id, devices, known)

    # ---- retention ----

    def delete_objects_before(self, cutoff: float, limit: int = 10_000) -> int:
        """Delete up to `limit` objects last seen before `cutoff`, oldest first; how many went."""
        return self._delete_chunk("objects", "last_seen", cutoff, limit)

    def delete_counts_before(self, cutoff: float, limit: int = 10_000) -> int:
        """Delete up to `limit` count rows of minutes that started before `cutoff`; how many went."""
        return self._delete_chunk("object_counts", "minute", cutoff, limit)

    def delete_snapshots_before(self, cutoff: float, limit: int = 10_000) -> int:
        """Delete up to `limit` object pictures taken before `cutoff`, then up to `limit` stored JPEGs no
        picture refers to any more; how many rows went (of both)."""
        conn = self.db.conn
        gone = self._delete_chunk("object_snapshots", "time", cutoff, limit)
        grace = time.time() - UNREFERENCED_GRACE_S
        unreferenced = UNREFERENCED_SQL.format(m="?")
        return gone + self._transaction(lambda: conn.execute(unreferenced, [grace, grace, limit]).rowcount)

    def _delete_chunk(self, table: str, column: str, cutoff: float, limit: int) -> int:
        conn = self.db.conn
        return self._transaction(lambda: conn.execute(
            f"delete from {table} where rowid in (select rowid from {table} where {column} < ?"
            f" order by {column} limit ?)", [cutoff, limit]).rowcount)


def _chunks(rows: list[tuple], width: int, max_params: int = 900):
    """(flat parameters, "(?, ...), ..." marks) per chunk of rows: under SQLite's oldest limit of 999."""
    per = max(1, max_params // width)
    one = "(" + ", ".join("?" * width) + ")"
    for start in range(0, len(rows), per):
        chunk = rows[start:start + per]
        yield [v for row in chunk for v in row], ", ".join([one] * len(chunk))

