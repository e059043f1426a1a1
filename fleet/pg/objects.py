"""Objects, counts and snapshots on PostgreSQL: the methods of `fleet.object_store.ObjectTables`, with the
same results and errors, from the same queries (`object_sql`, `count_sql` in the `POSTGRES` dialect).

The group commit (`fleet.pg.detections`) calls `_write_objects` inside its transaction: one statement per
table, whatever the group's size (rows passed as arrays and `unnest`ed), each in key order, so that two
replicas writing the same rows take their locks in the same order. Two replicas storing one device's batches
take turns on the device's row first (`_lock_devices`), so counts are added once: a replay finds the acked
sequence the other left.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from edgefleet.common.records import SnapshotRecord, TrackedObject

from ..object_queries import CountBucketRow, CountQuery, ObjectQuery
from ..object_rows import COUNT_KEY, OBJECT_COLUMNS, SNAPSHOT_COLUMNS, GroupWrites, object_from_row, upsert_assignments
from ..object_store import (
    OWNERS_SQL,
    PICTURES_SQL,
    UNREFERENCED_GRACE_S,
    UNREFERENCED_SQL,
    Dialect,
    bucket_rows,
    check_snapshot_kind,
    count_sql,
    object_sql,
    snapshot_answer,
)
from .base import PgTables

if TYPE_CHECKING:
    import psycopg

POSTGRES = Dialect("%s", "({column})::jsonb ? %s", '{column} collate "C"')

_OBJECT_TYPES = ("text", "text", "text", "int8", "text", "int4", "float8", "float8", "float8", "text", "text", "text",
                 "text", "text", "int8", "int4", "int4", "float8")
_UPSERT_OBJECTS = (f"insert into objects ({', '.join(OBJECT_COLUMNS)}) select * from unnest("
                   + ", ".join(f"%s::{t}[]" for t in _OBJECT_TYPES) + ") on conflict (device_id, object_id) do update"
                   f" set {upsert_assignments('excluded.last_seen >= objects.last_seen', 'greatest')}")
_ADD_COUNTS = (f"insert into object_counts ({', '.join(COUNT_KEY)}, count) select * from unnest(%s::text[],"
               " %s::text[], %s::int8[], %s::text[], %s::text[], %s::text[], %s::text[], %s::int8[])"
               f" on conflict ({', '.join(COUNT_KEY)}) do update set count = object_counts.count + excluded.count")
_STORE_JPEGS = ("insert into snapshots (sha256, jpeg, size, created) select * from unnest(%s::text[], %s::bytea[],"
                " %s::int4[], %s::float8[]) on conflict (sha256) do update set created = excluded.created")
_STORE_PICTURES = (f"insert into object_snapshots ({', '.join(SNAPSHOT_COLUMNS)}) select * from unnest(%s::text[],"
                   " %s::text[], %s::text[], %s::text[], %s::float8[], %s::text[], %s::float8[], %s::text[])"
                   " on conflict do nothing")


def _columns(rows: list[tuple], width: int) -> list[list]:
    """Rows as one list per column (what `unnest` takes), sorted by their leading key columns."""
    rows = sorted(rows, key=lambda row: row[:width])
    return [list(column) for column in zip(*rows)]


class PgObjectTables(PgTables):
    """Methods `PgStore` gains."""

    def _write_objects(self, conn: psycopg.Connection, writes: GroupWrites, now: float) -> None:
        for sql, rows, key in ((_UPSERT_OBJECTS, writes.object_rows(now), 2),
                               (_ADD_COUNTS, writes.count_rows(), len(COUNT_KEY)),
                               (_STORE_JPEGS, writes.snapshot_rows(now), 1),
                               (_STORE_PICTURES, list(writes.pictures.values()), 4)):
            if rows:
                conn.execute(sql, _columns(rows, key))

    def list_objects(self, query: ObjectQuery) -> list[TrackedObject]:
        """ListObjects (`ObjectTables.list_objects`)."""
        if query.device_ids is not None and not query.device_ids:
            return []
        sql, params = object_sql(query, POSTGRES)
        return [object_from_row(row) for row in self._rows(sql, params)]

    def count_objects(self, query: CountQuery) -> list[CountBucketRow]:
        """CountObjects (`ObjectTables.count_objects`)."""
        if query.device_ids is not None and not query.device_ids:
            return []
        sql, params, groups = count_sql(query, POSTGRES)
        with self.pool.connection() as conn:
            return bucket_rows(conn.execute(sql, params).fetchall(), groups)

    def get_snapshot(self, object_id: str, kind: str = "crop", device_id: str = "") -> SnapshotRecord:
        """GetSnapshot (`ObjectTables.get_snapshot`)."""
        check_snapshot_kind(kind)
        with self.pool.connection() as conn:
            devices = {d for (d,) in conn.execute(OWNERS_SQL.format(m="%s"), [object_id, object_id]).fetchall()}
            if not device_id and len(devices) == 1:
                device_id = next(iter(devices))
            params = [object_id, kind] + [device_id] * bool(device_id)
            rows = self._rows(PICTURES_SQL.format(m="%s", device=" and s.device_id = %s" * bool(device_id)), params,
                              conn)
        known = device_id in devices if device_id else bool(devices)
        return snapshot_answer(rows, object_id, kind, device_id, devices, known)

    # ---- retention ----

    def delete_objects_before(self, cutoff: float, limit: int = 10_000) -> int:
        return self._delete_chunk("objects", "last_seen", cutoff, limit)

    def delete_counts_before(self, cutoff: float, limit: int = 10_000) -> int:
        return self._delete_chunk("object_counts", "minute", cutoff, limit)

    def delete_snapshots_before(self, cutoff: float, limit: int = 10_000) -> int:
        """`ObjectTables.delete_snapshots_before`: a JPEG an ingest stores again meanwhile bumps its `created`,
        which the delete checks again on the row it waited for, so it stays."""
        gone = self._delete_chunk("object_snapshots", "time", cutoff, limit)
        grace = time.time() - UNREFERENCED_GRACE_S
        return gone + self._execute(UNREFERENCED_SQL.format(m="%s"), [grace, grace, limit])

    def _delete_chunk(self, table: str, column: str, cutoff: float, limit: int) -> int:
        return self._execute(f"delete from {table} where ctid = any(array(select ctid from {table}"
                             f" where {column} < %s order by {column} limit %s))", [cutoff, limit])
