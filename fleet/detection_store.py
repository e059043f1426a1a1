"""Detections: the frames devices publish, committed idempotently on (device id, sequence).

Frames are `edgefleet.common.records.FrameRecord`s (imported here under their names), the agent's
record type too.

A mixin of `FleetStore` (same connection, same single thread); `fleet.ingest` calls
`store_frames_many` for its group commits.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import replace

from edgefleet.common.records import FrameRecord, ObjectRecord, Record  # noqa: F401  (ObjectRecord: re-exported)

from .errors import InvalidArgument, NotFound
from .frame_rows import (  # noqa: F401  (re-exported: the names the stores and tests import from here)
    DETECTION_COLUMNS,
    StoreResult,
    frame_from_row,
    frame_rows,
    objects_json,
    take_new_rows,
)
from .history_store import SQLITE_MAX_INT
from .object_rows import ALL_FRAMES, FramePolicy, GroupWrites, ParsedBatch, parse_batch, take_batch
from .tables import StoreTables

logger = logging.getLogger(__name__)


class DetectionTables(StoreTables):
    """Methods `FleetStore` gains."""

    frames_policy: FramePolicy = ALL_FRAMES
    """Which frames become rows of `detections` (`serve --store-frames`); the others are acked all the same."""

    def store_frames(self, device_id: str, frames: Sequence[Record]) -> StoreResult:
        """Commit a batch; idempotent on (device id, sequence). Acks the highest committed sequence.

        The agent sends in ascending order on one stream, so once this batch is committed every
        sequence up to its highest is either in the store or was never produced.
        """
        (result,) = self.store_frames_many([(device_id, list(frames))])
        if isinstance(result, Exception):
            raise result
        return result

    def store_frames_many(
        self, batches: list[tuple[str, list[Record]]]
    ) -> list[StoreResult | InvalidArgument | NotFound]:
        """Commit many devices' batches in one transaction (`fleet.ingest`'s group commit).

        A batch holds any records (`common.records.Record`: frames, object events, counts, snapshots),
        written as `fleet.object_rows` says; frames only as `frames_policy` keeps them.
        One result per batch, in order: what `store_frames` would have returned for it alone
        (batches of one device see each other in order), or the error it would have raised.
        Every batch is validated before the transaction, so a bad one (unknown device, bad
        sequence) is refused alone and the others commit. Should the shared transaction still
        fail, each batch is retried in a transaction of its own, so only the culprit fails.
        """
        now = time.time()
        results: list = [None] * len(batches)
        acked = self._acked_sequences({device_id for device_id, _ in batches})
        valid: list[tuple[int, str, ParsedBatch]] = []
        for i, (device_id, records) in enumerate(batches):
            try:
                if device_id not in acked:
                    raise NotFound(f"device {device_id!r} is not enrolled")
                valid.append((i, device_id, parse_batch(device_id, records, now, self.frames_policy)))
            except (InvalidArgument, NotFound) as err:
                results[i] = err
        try:
            self._commit_frames(valid, dict(acked), now, results)
        except sqlite3.Error:
            if len(valid) <= 1:
                raise
            logger.warning("group commit of %d batches failed; committing them one by one", len(valid), exc_info=True)
            for item in valid:
                device_id = item[1]
                try:
                    acked = self._acked_sequences({device_id})
                    if device_id not in acked:
                        raise NotFound(f"device {device_id!r} is not enrolled")
                    self._commit_frames([item], acked, now, results)
                except (sqlite3.Error, NotFound) as err:
                    results[item[0]] = err
        return results

    def _acked_sequences(self, device_ids: set[str]) -> dict[str, int]:
        """Acked sequence of each enrolled device among `device_ids` (absent: not enrolled).

        Each query answers in one row (json_group_object): every row SQLite steps through hands
        the GIL away and waits to get it back, up to 5 ms while the event loop thread is busy.
        """
        ids = list(device_ids)
        acked: dict[str, int] = {}
        for start in range(0, len(ids), 500):  # 500 parameters: under SQLite's oldest limit (999)
            chunk = ids[start:start + 500]
            (text,) = self.db.conn.execute(
                "select json_group_object(device_id, coalesce(acked_sequence, 0)) from devices"
                f" where device_id in ({', '.join('?' * len(chunk))})", chunk).fetchone()
            acked.update(json.loads(text))
        return acked

    def _stored_keys(self, keys: list[tuple[str, int]]) -> set[tuple[str, int]]:
        """Which (device id, sequence) pairs the detections table holds already; one row per query."""
        present: set[tuple[str, int]] = set()
        for start in range(0, len(keys), 400):
            chunk = keys[start:start + 400]
            (text,) = self.db.conn.execute(
                "select json_group_array(json_array(d.device_id, d.sequence)) from (values "
                + ", ".join(["(?, ?)"] * len(chunk))
                + ") as v cross join detections as d on d.device_id = v.column1 and d.sequence = v.column2",
                [v for key in chunk for v in key]).fetchone()
            present.update((device_id, sequence) for device_id, sequence in json.loads(text))
        return present

    def _commit_frames(self, valid: list[tuple[int, str, ParsedBatch]], acked: dict[str, int], now: float,
                       results: list) -> None:
        """One transaction for the validated batches; fills their slots in `results` once it commits.

        An explicit BEGIN: the connection is in autocommit mode (isolation_level=None), where
        `with conn:` opens no transaction and every inserted row would commit on its own.
        A few statements per group, whatever its size (which rows are duplicates: one query;
        the new rows: one INSERT per 100; objects, counts and snapshots: one statement per chunk of
        each; the devices: one UPDATE per 300), because each SQLite step gives the GIL away: one
        statement per row costs milliseconds per row under load.
        """
        conn = self.db.conn
        done: list[tuple[int, StoreResult]] = []
        writes = GroupWrites()

        def work() -> None:  # under the write lock (BEGIN IMMEDIATE): nothing changes between the check and the insert
            present = self._stored_keys([(row[0], row[1]) for _, _, batch in valid for row in batch.frame_rows])
            for i, device_id, batch in valid:
                done.append((i, take_batch(device_id, batch, acked, present, writes)))
            new_rows = writes.frame_rows
            before = conn.total_changes
            for start in range(0, len(new_rows), 100):  # 100 rows: 800 parameters, under SQLite's oldest limit
                chunk = new_rows[start:start + 100]
                conn.execute(self._insert_frames_sql(len(chunk)), [v for row in chunk for v in row])
            if conn.total_changes - before != len(new_rows):  # never acknowledge a row that is not there
                raise sqlite3.IntegrityError(
                    f"stored {conn.total_changes - before} of {len(new_rows)} new detection rows")
            self._write_objects(writes, now)
            devices = [(d, acked[d], writes.frames_stored.get(d, 0), writes.records_stored.get(d, 0))
                       for d in writes.touched]
            for start in range(0, len(devices), 200):  # 4 parameters a device: 800, under SQLite's oldest limit
                chunk = devices[start:start + 200]
                conn.execute(
                    "update devices set acked_sequence = v.column2, detections_stored = detections_stored + v.column3,"
                    " records_stored = coalesce(records_stored, 0) + v.column4, last_seen = ? from (values "
                    + ", ".join(["(?, ?, ?, ?)"] * len(chunk)) + ") as v where devices.device_id = v.column1",
                    [now, *(v for device in chunk for v in device)],
                )

        self._transaction(work)
        for i, result in done:
            results[i] = result

    @staticmethod
    def _insert_frames_sql(n_rows: int) -> str:
        """One INSERT of `n_rows` rows: one SQLite step, where `executemany` takes one per row and
        hands the GIL to the event loop thread and back around each (slow when that one is busy)."""
        return (f"insert or ignore into detections ({', '.join(DETECTION_COLUMNS)}) values "
                + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * n_rows))

    def list_detections(
        self, device_id: str, stream_id: str = "", after_sequence: int = 0, limit: int = 100,
        *, since: float | None = None, until: float | None = None, labels: Sequence[str] = (),
    ) -> tuple[list[FrameRecord], int]:
        """One device's records in sequence order: after `after_sequence`, or the newest `limit`.

        `since`/`until` bound the capture time (at or after, before); `labels` keeps the frames with an
        object of those class labels, and of each frame only those objects."""
        stored = self._stored_count(device_id)
        after_sequence = min(after_sequence, SQLITE_MAX_INT)  # no stored sequence is above it
        where, params = _detection_filter([device_id], stream_id, since, until, labels)
        if after_sequence:
            sql = f"select * from detections where {where} and sequence > ? order by sequence limit ?"
            params += [after_sequence, limit]
        else:  # the newest `limit`, returned oldest first
            sql = (f"select * from (select * from detections where {where} order by sequence desc limit ?)"
                   " order by sequence")
            params.append(limit)
        return self._frames(sql, params, labels), stored

    def _stored_count(self, device_id: str) -> int:
        """How many records the device stores; for a device removed without --purge-data, the records
        it left (kept until retention deletes them). NotFound when there is neither."""
        try:
            return self._require(device_id).detections_stored
        except NotFound:
            (left,) = self.db.execute("select count(*) from detections where device_id = ?", [device_id]).fetchone()
            if not left:
                raise
            return int(left)

    def list_detections_of(
        self, device_ids: Sequence[str], stream_id: str = "", limit: int = 100,
        *, since: float | None = None, until: float | None = None, labels: Sequence[str] = (),
    ) -> tuple[list[FrameRecord], int]:
        """The newest `limit` records of several devices (a selector's), oldest first by capture time,
        and how many the devices store in all; filters as `list_detections`."""
        if not device_ids:
            return [], 0
        where, params = _detection_filter(device_ids, stream_id, since, until, labels)
        sql = (f"select * from (select * from detections where {where}"
               " order by capture_time desc, device_id, sequence desc limit ?)"
               " order by capture_time, device_id, sequence")
        frames = self._frames(sql, [*params, limit], labels)
        marks = ", ".join("?" * len(device_ids))
        (total,) = self.db.execute(f"select coalesce(sum(detections_stored), 0) from devices"
                                   f" where device_id in ({marks})", list(device_ids)).fetchone()
        return frames, int(total)

    def _frames(self, sql: str, params: list, labels: Sequence[str]) -> list[FrameRecord]:
        cursor = self.db.execute(sql, params)
        columns = [c[0] for c in cursor.description]
        frames = [frame_from_row(dict(zip(columns, row))) for row in cursor.fetchall()]
        if labels:
            wanted = set(labels)
            frames = [replace(f, objects=[o for o in f.objects if o.label in wanted]) for f in frames]
        return frames


def _detection_filter(device_ids: Sequence[str], stream_id: str, since: float | None, until: float | None,
                      labels: Sequence[str]) -> tuple[str, list]:
    """The `where` clause (and its parameters) the listing methods share."""
    where = f"device_id in ({', '.join('?' * len(device_ids))})"
    params: list = list(device_ids)
    if stream_id:
        where += " and stream_id = ?"
        params.append(stream_id)
    if since is not None:
        where += " and capture_time >= ?"
        params.append(since)
    if until is not None:
        where += " and capture_time < ?"
        params.append(until)
    if labels:  # the label is the third field of each stored object row (records.object_row)
        where += (" and exists (select 1 from json_each(detections.objects) as o"
                  f" where json_extract(o.value, '$[2]') in ({', '.join('?' * len(labels))}))")
        params += list(labels)
    return where, params


