"""Artifacts (their bytes too), rollouts and events (PostgreSQL).

The methods of the SQLite store's mixin of the same name (`fleet.rollout_store.RolloutTables`), with
the same results and errors, plus the artifact bytes (`artifact_chunks`) that
`fleet.pg.artifacts.DatabaseBackedArtifactFiles` writes once and every replica reads.

Text sorts as SQLite sorts it (byte order: `collate "C"`), whatever the database's collation.
"""
from __future__ import annotations

import time
from collections.abc import Generator, Iterable
from dataclasses import fields
from typing import TYPE_CHECKING

from ..rollout_store import (
    DEVICE_COLUMNS,
    EVENT_COLUMNS,
    ROLLOUT_COLUMNS,
    ArtifactRecord,
    EventRecord,
    RolloutDeviceRecord,
    RolloutRecord,
    RolloutState,
    device_row,
    event_from_row,
    like_prefix,
    no_artifact,
    no_rollout,
    only_prefix_match,
    rollout_changes,
    rollout_from_rows,
    rollout_values,
)
from .base import PgTables

if TYPE_CHECKING:
    import psycopg

ARTIFACT_COLUMNS = tuple(f.name for f in fields(ArtifactRecord))
_ROLLOUT_SELECT = f"select {', '.join('r.' + c for c in ROLLOUT_COLUMNS)} from rollouts r"
_DEVICE_ORDER = 'wave < 0, wave, device_id collate "C"'  # the canary wave first, skipped devices last


class PgRolloutTables(PgTables):
    """Methods `PgStore` gains."""

    # ---- artifacts ----

    def add_artifact(self, record: ArtifactRecord) -> ArtifactRecord:
        """Store it; the same sha256 pushed again (on any replica, even at the same moment) keeps the
        first record (and signature)."""
        rows = self._rows(
            f"insert into artifacts ({', '.join(ARTIFACT_COLUMNS)}) values ({', '.join(['%s'] * 7)})"
            f" on conflict (sha256) do nothing returning {', '.join(ARTIFACT_COLUMNS)}",
            [getattr(record, c) for c in ARTIFACT_COLUMNS],
        )
        if rows:
            return ArtifactRecord(**rows[0])
        return self.get_artifact(record.sha256)

    def find_artifact(self, sha256: str) -> ArtifactRecord | None:
        rows = self._rows(f"select {', '.join(ARTIFACT_COLUMNS)} from artifacts where sha256 = %s", [sha256])
        return ArtifactRecord(**rows[0]) if rows else None

    def get_artifact(self, sha256: str) -> ArtifactRecord:
        record = self.find_artifact(sha256)
        if record is None:
            raise no_artifact(sha256)
        return record

    def list_artifacts(self) -> list[ArtifactRecord]:
        rows = self._rows(f"select {', '.join(ARTIFACT_COLUMNS)} from artifacts order by created, sha256")
        return [ArtifactRecord(**row) for row in rows]

    def device_may_fetch(self, device_id: str, sha256: str) -> bool:
        """A device fetches only what a rollout sent it."""
        return bool(self._rows(
            "select 1 from rollout_devices d join rollouts r using (rollout_id)"
            " where d.device_id = %s and r.artifact_sha256 = %s and d.wave >= 0 limit 1",
            [device_id, sha256],
        ))

    def store_artifact_bytes(self, sha256: str, chunks: Iterable[bytes]) -> bool:
        """Keep the bytes of `sha256` as `chunks` (numbered from 0), all in one transaction; False, and
        `chunks` left unread, when the database holds them already (written by another upload, or
        another replica at the same moment: then the first transaction's rows stay)."""
        with self._tx() as conn:
            if conn.execute("select 1 from artifact_chunks where sha256 = %s and index = 0", [sha256]).fetchone():
                return False
            with conn.cursor() as cursor:
                for index, data in enumerate(chunks):
                    cursor.execute("insert into artifact_chunks (sha256, index, data) values (%s, %s, %b)"
                                   " on conflict do nothing", [sha256, index, data])
        return True

    def artifact_bytes(self, sha256: str) -> Generator[bytes, None, None]:
        """The bytes `store_artifact_bytes` kept, chunk by chunk (one in memory at a time); nothing
        when the database has none. The reader checks them against their sha256. Holds a pooled
        connection until it is exhausted or closed."""
        with self._tx() as conn, conn.cursor(name="artifact_bytes", binary=True) as cursor:
            cursor.itersize = 1
            cursor.execute("select index, data from artifact_chunks where sha256 = %s order by index", [sha256])
            for _, data in cursor:
                yield data

    # ---- rollouts ----

    def insert_rollout(self, rollout: RolloutRecord) -> RolloutRecord:
        """The rollout and all its devices, in one transaction."""
        with self._tx() as conn:
            conn.execute(f"insert into rollouts ({', '.join(ROLLOUT_COLUMNS)}) values ({', '.join(['%s'] * 8)})",
                         rollout_values(rollout))
            rows = [device_row(rollout.rollout_id, d) for d in rollout.devices]
            with conn.cursor() as cursor:
                cursor.executemany(f"insert into rollout_devices ({', '.join(DEVICE_COLUMNS)}) values "
                                   f"({', '.join(['%s'] * len(DEVICE_COLUMNS))})",
                                   [[r[c] for c in DEVICE_COLUMNS] for r in rows])
        return self.get_rollout(rollout.rollout_id)

    def update_rollout(self, rollout_id: str, *, state: RolloutState | None = None, wave: int | None = None,
                       reason: str | None = None) -> RolloutRecord:
        values = rollout_changes(state, wave, reason)
        changed = self._execute(f"update rollouts set {', '.join(f'{c} = %s' for c in values)} where rollout_id = %s",
                                [*values.values(), rollout_id])
        if not changed:
            raise no_rollout(rollout_id)
        return self.get_rollout(rollout_id)

    def update_rollout_device(self, rollout_id: str, device: RolloutDeviceRecord) -> None:
        row = device_row(rollout_id, device)
        changes = ", ".join(f"{c} = excluded.{c}" for c in DEVICE_COLUMNS[2:])
        self._execute(f"insert into rollout_devices ({', '.join(DEVICE_COLUMNS)}) values "
                      f"({', '.join(['%s'] * len(DEVICE_COLUMNS))})"
                      f" on conflict (rollout_id, device_id) do update set {changes}",
                      [row[c] for c in DEVICE_COLUMNS])

    def get_rollout(self, rollout_id: str) -> RolloutRecord:
        found = self._rollouts("where r.rollout_id = %s", [rollout_id])
        if not found:
            raise no_rollout(rollout_id)
        return found[0]

    def find_rollout(self, id_or_prefix: str) -> RolloutRecord:
        """What an operator names: the rollout with this id, or the one whose id starts with it
        (as artifacts take a sha256 prefix). NotFound / InvalidArgument (ambiguous) say which.
        The prefix matches ASCII letters of either case, as SQLite's LIKE does."""
        with self.pool.connection() as conn:
            found = self._rollouts("where r.rollout_id = %s", [id_or_prefix], conn)
            if found:
                return found[0]
            rows = conn.execute("select rollout_id from rollouts where rollout_id ilike %s escape '\\'"
                                " order by created desc limit 6", [like_prefix(id_or_prefix)]).fetchall() \
                if id_or_prefix else []
            (rollout_id,) = only_prefix_match(id_or_prefix, rows)
            return self._rollouts("where r.rollout_id = %s", [rollout_id], conn)[0]

    def list_rollouts(self, states: tuple[RolloutState, ...] = ()) -> list[RolloutRecord]:
        """Newest first."""
        where = "where r.state = any(%s)" if states else ""
        return self._rollouts(f"{where} order by r.created desc", [[int(s) for s in states]] if states else [])

    def rollout_counts(self) -> dict[RolloutState, int]:
        rows = self._rows("select state, count(*) as n from rollouts group by state order by state")
        return {RolloutState(row["state"]): row["n"] for row in rows}

    def rollouts_of_device(self, device_id: str, states: tuple[RolloutState, ...]) -> list[RolloutRecord]:
        return self._rollouts("join rollout_devices d using (rollout_id) where d.device_id = %s and r.state = any(%s)"
                              " order by r.created", [device_id, [int(s) for s in states]])

    def _rollouts(self, rest: str, params: list, conn: psycopg.Connection | None = None) -> list[RolloutRecord]:
        """The rollouts `select ... from rollouts r <rest>` finds, in its order, each with its devices
        (two queries, however many rollouts)."""
        if conn is None:
            with self.pool.connection() as pooled:
                return self._rollouts(rest, params, pooled)
        rows = self._rows(f"{_ROLLOUT_SELECT} {rest}", params, conn)
        if not rows:
            return []
        devices: dict[str, list[dict]] = {row["rollout_id"]: [] for row in rows}
        for device in self._rows(f"select {', '.join(DEVICE_COLUMNS)} from rollout_devices"
                                 f" where rollout_id = any(%s) order by {_DEVICE_ORDER}", [list(devices)], conn):
            devices[device["rollout_id"]].append(device)
        return [rollout_from_rows(row, devices[row["rollout_id"]]) for row in rows]

    # ---- events ----

    def add_event(self, kind: str, message: str, device_id: str = "", rollout_id: str = "",
                  when: float | None = None) -> EventRecord:
        when = time.time() if when is None else when
        rows = self._rows("insert into events (time, kind, message, device_id, rollout_id) values (%s, %s, %s, %s, %s)"
                          " returning id", [when, kind, message, device_id, rollout_id])
        return EventRecord(rows[0]["id"], when, kind, message, device_id, rollout_id)

    def list_events(self, rollout_id: str = "", device_id: str = "", limit: int = 100) -> list[EventRecord]:
        """The newest `limit` events (all of them for a negative limit, as in SQLite), oldest first."""
        where, params = [], []
        if rollout_id:
            where.append("rollout_id = %s")
            params.append(rollout_id)
        if device_id:
            where.append("device_id = %s")
            params.append(device_id)
        sql = f"select {', '.join(EVENT_COLUMNS)} from events"
        if where:
            sql += " where " + " and ".join(where)
        rows = self._rows(f"select * from ({sql} order by id desc limit %s) as newest order by id",
                          [*params, None if limit < 0 else limit])
        return [event_from_row([row[c] for c in EVENT_COLUMNS]) for row in rows]
