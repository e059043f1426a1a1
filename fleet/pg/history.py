"""Health history and retention (PostgreSQL).

The methods of the SQLite store's mixin of the same name (`fleet.history_store.HistoryTables`), with the
same results and errors. Retention of detections drops a whole day partition (fleet/pg/detections.py) once
every frame in it was received before the cutoff, after taking its frames off their devices' counts;
what is left before the cutoff goes row by row, `limit` at a time, as on SQLite.

Lock order, as ingest's: the devices' rows first, then the detections tables; so a retention chunk and a
group commit wait for each other but never deadlock.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from typing import TYPE_CHECKING

from ..history_store import HistoryTables, check_health_tiers, history_tiers
from .base import PgTables
from .detections import (
    BY_DEVICE_ID,
    DAY_S,
    DDL_LOCK_TIMEOUT,
    PARTITIONS_SQL,
    day_partitions,
    maintained_days,
    sql_limit,
)

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger(__name__)

RETENTION_LOCK = 0x6564_6765_666C_52
"""pg_advisory_xact_lock key: one retention chunk (rows or a partition) at a time, whichever replica runs it."""
HEALTH_LOCK = 0x6566_4852
"""First key of pg_advisory_xact_lock(key, hashtext(device id)): one rollup of a device's health at a time."""
CLOCK_MARGIN_S = 60.0
"""A partition is dropped only if its newest frame was received this long before its count began: a frame
stored after the count (by a replica whose group began up to this much earlier) keeps the partition."""

_MEANS, _MAXIMA = HistoryTables._HEALTH_MEANS, HistoryTables._HEALTH_MAXIMA


class _Changed(Exception):
    """Frames reached a partition between its count and its lock: it stays, for the next sweep."""


class PgHistoryTables(PgTables):
    """Methods `PgStore` gains."""

    HEALTH_RESOLUTIONS_S = HistoryTables.HEALTH_RESOLUTIONS_S

    def maintain_partitions(self, now: float | None = None) -> list[str]:
        """`PgDetectionTables.maintain_partitions`."""
        raise NotImplementedError

    def rollup_health(
        self, device_id: str, *, now: float, raw_keep_s: float, minute_keep_s: float, keep_s: float | None
    ) -> dict[str, int]:
        """Thin one device's health history, in one transaction (`HistoryTables.rollup_health`): raw samples
        into minute rows, minute rows into hour rows, then rows older than `keep_s` go.

        Returns {"rolled": rows rolled up, "written": bucket rows written, "expired": rows deleted}."""
        check_health_tiers(raw_keep_s, minute_keep_s, keep_s)
        columns = ", ".join(_MEANS + _MAXIMA)
        aggregates = ", ".join([f"avg({c})" for c in _MEANS] + [f"max({c})" for c in _MAXIMA])
        counts = {"rolled": 0, "written": 0, "expired": 0}
        raw_s, minute_s, hour_s = self.HEALTH_RESOLUTIONS_S
        with self._tx() as conn:
            conn.execute("select pg_advisory_xact_lock(%s, hashtext(%s))", [HEALTH_LOCK, device_id])
            for source_s, target_s, keep in ((raw_s, minute_s, raw_keep_s), (minute_s, hour_s, minute_keep_s)):
                cutoff = int(now - keep) // target_s * target_s  # the start of the bucket still filling
                args = {"device": device_id, "source": source_s, "target": target_s, "cutoff": cutoff}
                counts["written"] += conn.execute(
                    f"insert into health_samples (device_id, time, resolution_s, {columns})"
                    f" select %(device)s, bucket, %(target)s, {aggregates} from ("
                    "  select *, trunc(time)::bigint / %(target)s * %(target)s as bucket from health_samples"
                    "  where device_id = %(device)s and resolution_s = %(source)s and time < %(cutoff)s) as source"
                    " where not exists (select 1 from health_samples as done where done.device_id = %(device)s"
                    "  and done.resolution_s = %(target)s and done.time = source.bucket)"
                    " group by bucket",
                    args,
                ).rowcount
                counts["rolled"] += conn.execute(
                    "delete from health_samples where device_id = %(device)s and resolution_s = %(source)s"
                    " and time < %(cutoff)s", args,
                ).rowcount
            if keep_s is not None:
                counts["expired"] = conn.execute(
                    "delete from health_samples where device_id = %s and resolution_s = any(%s) and time < %s",
                    [device_id, list(self.HEALTH_RESOLUTIONS_S), now - keep_s],
                ).rowcount
        return counts

    def health_history(
        self, device_id: str, since: float, until: float, resolution_s: int | None = None
    ) -> list[dict]:
        """The device's health rows with `since <= time < until`, oldest first, each part of the range from
        the finest tier that holds it, or from tier `resolution_s` only (`HistoryTables.health_history`)."""
        self._require(device_id)
        tiers = history_tiers(since, until, resolution_s)
        rows: list[dict] = []
        upper = until
        with self.pool.connection() as conn:
            for tier in tiers:
                rows[:0] = self._rows(  # coarser tiers are older
                    "select * from health_samples where device_id = %s and resolution_s = %s and time >= %s"
                    " and time < %s order by time", [device_id, tier, since, upper], conn)
                (oldest,) = self._rows("select min(time) as t from health_samples where device_id = %s"
                                       " and resolution_s = %s", [device_id, tier], conn)
                if oldest["t"] is not None:
                    upper = min(upper, oldest["t"])
                if upper <= since:
                    break
        return rows

    def delete_events_before(self, cutoff: float, limit: int = 10_000) -> int:
        """Delete up to `limit` events older than `cutoff`, oldest first, in one transaction; how many went."""
        return self._execute("delete from events where id in (select id from events where time < %s"
                             " order by time limit %s)", [cutoff, sql_limit(limit)])

    # ---- detections ----

    def delete_detections_before(self, cutoff: float, limit: int = 10_000) -> int:
        """Delete detection records received before `cutoff` (unix seconds), taking them off their devices'
        `detections_stored`; how many went: call again until it returns less than `limit`.

        First each whole day partition (outside the days `maintain_partitions` keeps) whose day ended by
        the cutoff and whose every frame was received before it is dropped, each in a transaction of its
        own, until `limit` records went; then up to `limit` less those records received before the cutoff
        go row by row, oldest first, in one transaction (`HistoryTables.delete_detections_before`).
        Makes the partitions the coming days need, too: retention calls this at each sweep."""
        now = time.time()
        self.maintain_partitions(now)
        kept = set(maintained_days(now))
        deleted = 0
        for name, day in day_partitions(self._rows(PARTITIONS_SQL)):
            if day + DAY_S > cutoff or day in kept:
                continue
            deleted += self._drop_partition(name, cutoff)
            if deleted >= limit:
                return deleted
        return deleted + self._delete_rows_before(cutoff, limit - deleted)

    def _drop_partition(self, name: str, cutoff: float) -> int:
        """Drop the partition if every frame in it was received before `cutoff`, taking its frames off their
        devices' counts; how many frames went (0: it stays).

        Counted before the table's lock is taken (a long read that blocks no one), then checked under it:
        a frame stored since would have been received after the count began."""
        from psycopg import errors, sql

        part = sql.Identifier(name)
        counted_from = time.time()
        try:
            with self._tx() as conn:
                conn.execute("select pg_advisory_xact_lock(%s)", [RETENTION_LOCK])
                if not self._received_before(conn, part, cutoff):
                    return 0
                per_device = dict(conn.execute(
                    sql.SQL("select device_id, count(*) from {} group by device_id").format(part)).fetchall())
                self._lock_rows_of(conn, list(per_device))
                conn.execute(f"set local lock_timeout = '{DDL_LOCK_TIMEOUT}'")
                conn.execute("lock table only detections in access exclusive mode")
                conn.execute(sql.SQL("lock table {} in access exclusive mode").format(part))
                if not self._received_before(conn, part, min(cutoff, counted_from - CLOCK_MARGIN_S)):
                    raise _Changed
                conn.execute(sql.SQL("drop table {}").format(part))
                self._take_off(conn, per_device)
        except _Changed:
            logger.info("partition %s kept: frames reached it while it was counted", name)
            return 0
        except errors.LockNotAvailable:
            logger.warning("partition %s not dropped: the detections table stayed busy for %s; next sweep",
                           name, DDL_LOCK_TIMEOUT)
            return 0
        total = sum(per_device.values())
        logger.info("dropped partition %s: %d detection records received before %.0f", name, total, cutoff)
        return total

    @staticmethod
    def _received_before(conn: psycopg.Connection, part: object, cutoff: float) -> bool:
        """Whether every frame in the partition (none, too) was received before `cutoff`."""
        from psycopg import sql

        (newest,) = conn.execute(sql.SQL("select max(received) from {}").format(part)).fetchone() or (None,)
        return newest is None or newest < cutoff

    def _delete_rows_before(self, cutoff: float, limit: int) -> int:
        """Delete up to `limit` records received before `cutoff`, oldest first, in one transaction."""
        from psycopg import sql

        if limit <= 0:
            return 0
        with self._tx() as conn:
            conn.execute("select pg_advisory_xact_lock(%s)", [RETENTION_LOCK])
            rows = conn.execute("select tableoid::regclass::text, device_id, sequence from detections"
                                " where received < %s order by received limit %s", [cutoff, limit]).fetchall()
            if not rows:
                return 0
            self._lock_rows_of(conn, list({device_id for _, device_id, _ in rows}))
            by_partition: dict[str, list[tuple[str, int]]] = {}
            for partition, device_id, sequence in rows:
                by_partition.setdefault(partition, []).append((device_id, sequence))
            per_device: Counter[str] = Counter()
            for partition, keys in by_partition.items():
                device_ids, sequences = zip(*keys)
                gone = conn.execute(  # regclass text is the partition's name as SQL spells it (quoted if need be)
                    sql.SQL("delete from {} as d using unnest(%s::text[], %s::bigint[]) as k (device_id, sequence)"
                            " where d.device_id = k.device_id and d.sequence = k.sequence and d.received < %s"
                            " returning d.device_id").format(sql.SQL(partition)),
                    [list(device_ids), list(sequences), cutoff]).fetchall()
                per_device.update(device_id for (device_id,) in gone)
            self._take_off(conn, dict(per_device))
        return sum(per_device.values())

    @staticmethod
    def _lock_rows_of(conn: psycopg.Connection, device_ids: list[str]) -> None:
        """Hold these devices' rows (those that exist), in ingest's order."""
        conn.execute(f"select 1 from devices where device_id = any(%s) order by {BY_DEVICE_ID} for no key update",
                     [sorted(device_ids)])

    @staticmethod
    def _take_off(conn: psycopg.Connection, per_device: dict[str, int]) -> None:
        """Subtract the records that went from their devices' `detections_stored` (never below 0)."""
        if per_device:
            conn.execute(
                "update devices set detections_stored = greatest(0, devices.detections_stored - v.n)"
                " from unnest(%s::text[], %s::bigint[]) as v (device_id, n) where devices.device_id = v.device_id",
                [list(per_device), list(per_device.values())])
