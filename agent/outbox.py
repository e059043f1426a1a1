"""The durable outbox: a frame's detections are committed here before they count as produced.

Sequences are assigned here, per device, from 1, and never reused (AUTOINCREMENT keeps
counting after deletes). Rows leave only when the controller acknowledges a sequence it
committed. One Outbox object per thread: the pipeline appends, the link reads and acks.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class OutboxObject:
    track_id: int
    class_id: int
    label: str
    score: float
    xyxy: tuple[float, float, float, float]
    predicted: bool = False


@dataclass
class OutboxRecord:
    stream_id: str
    frame_index: int
    capture_time: float
    objects: list[OutboxObject] = field(default_factory=list)
    sequence: int = 0


class Outbox:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=10.0)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")  # a committed record survives power loss
        self._conn.execute(
            "create table if not exists outbox ("
            " sequence integer primary key autoincrement, stream_id text not null,"
            " frame_index integer not null, capture_time real not null, objects text not null)"
        )

    def close(self) -> None:
        self._conn.close()

    def append(self, record: OutboxRecord) -> int:
        return self.append_many([record])[0]

    def append_many(self, records: list[OutboxRecord]) -> list[int]:
        """Commit several records in one transaction (one fsync); returns their sequences."""
        self._conn.execute("begin")
        try:
            sequences = [self._insert(record) for record in records]
            self._conn.execute("commit")
        except BaseException:
            self._conn.execute("rollback")
            raise
        return sequences

    def _insert(self, record: OutboxRecord) -> int:
        objects = json.dumps([
            [o.track_id, o.class_id, o.label, round(float(o.score), 5),
             [round(float(v), 2) for v in o.xyxy], int(o.predicted)]
            for o in record.objects
        ])
        cursor = self._conn.execute(
            "insert into outbox (stream_id, frame_index, capture_time, objects) values (?, ?, ?, ?)",
            (record.stream_id, record.frame_index, record.capture_time, objects),
        )
        record.sequence = cursor.lastrowid
        return record.sequence

    def pending(self, after_sequence: int = 0, limit: int = 64) -> list[OutboxRecord]:
        rows = self._conn.execute(
            "select sequence, stream_id, frame_index, capture_time, objects from outbox"
            " where sequence > ? order by sequence limit ?",
            (after_sequence, limit),
        ).fetchall()
        return [
            OutboxRecord(
                stream_id=stream_id, frame_index=frame_index, capture_time=capture_time, sequence=seq,
                objects=[OutboxObject(t, c, lbl, s, tuple(box), bool(p)) for t, c, lbl, s, box, p in json.loads(objs)],
            )
            for seq, stream_id, frame_index, capture_time, objs in rows
        ]

    def ack(self, upto_sequence: int) -> int:
        """Forget everything the controller has committed; returns how many rows left."""
        return self._conn.execute("delete from outbox where sequence <= ?", (upto_sequence,)).rowcount

    def depth(self) -> int:
        return self._conn.execute("select count(*) from outbox").fetchone()[0]

    def last_sequence(self) -> int:
        row = self._conn.execute("select seq from sqlite_sequence where name = 'outbox'").fetchone()
        return row[0] if row else 0
