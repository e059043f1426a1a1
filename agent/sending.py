"""What the link sends next: the records the pipeline just committed, kept in memory, and a batch's byte cap.

The pipeline hands each committed group to the link (`Fresh.committed`, any thread); the link's
publishing stream takes them in sequence order (`Fresh.take`) and reads the outbox only after a
reconnect, a gap or a backlog. A DetectionBatch stays under `MAX_BATCH_BYTES` (snapshots are tens
of kilobytes each; gRPC refuses a message over 4 MiB by default), measured by `record_bytes`.
"""
from __future__ import annotations

import threading
from collections import deque

from edgefleet.common.records import CountRecord, FrameRecord, ObjectEventRecord, Record, SnapshotRecord

FRESH_MAX = 1024
"""Committed records the link keeps in memory to send (Link.committed); older ones it reads back
from the outbox (a controller away for a while, a backlog)."""

MAX_BATCH_BYTES = 1 << 20
"""A DetectionBatch's bytes at most (as `record_bytes` counts them), a quarter of gRPC's default
message limit; a single record larger than this still goes alone."""


def record_bytes(record: Record) -> int:
    """About what `record` adds to a DetectionBatch, rounded up (no serialization: it runs per record sent)."""
    if isinstance(record, FrameRecord):
        return 48 + len(record.stream_id) + 56 * len(record.objects)
    if isinstance(record, SnapshotRecord):
        return 160 + len(record.jpeg) + len(record.stream_id) + len(record.object_id) + len(record.label)
    if isinstance(record, ObjectEventRecord):
        obj = record.object
        return (192 + len(obj.object_id) + len(obj.stream_id) + len(obj.label) + 28 * len(obj.path)
                + sum(8 + len(z) for z in obj.zones) + sum(40 + len(c[0]) for c in obj.crossings))
    if isinstance(record, CountRecord):
        return 16 + sum(48 + len(r.stream) + len(r.name) + len(r.label) for r in record.rows)
    raise TypeError(f"not an outbox record: {type(record).__name__}")


def within_bytes(records: list[Record], max_bytes: int = MAX_BATCH_BYTES) -> int:
    """How many of `records`, from the first, fit one batch of `max_bytes` (at least one, when any)."""
    total = 0
    for i, record in enumerate(records):
        total += record_bytes(record)
        if total > max_bytes and i:
            return i
    return len(records)


class Fresh:
    """Records committed and handed to the link, not yet taken to send. `committed` from any thread;
    only the link's thread takes. A record evicted meanwhile (FRESH_MAX) shows as a gap, never as a
    record skipped: the link then reads the outbox."""

    def __init__(self, max_records: int = FRESH_MAX):
        self._records: deque[Record] = deque(maxlen=max_records)
        self._lock = threading.Lock()
        self.forgot = False
        """The pipeline's side dropped what it handed over (the outbox dropped records): read the outbox."""

    def __bool__(self) -> bool:
        return bool(self._records)

    def committed(self, records: list[Record]) -> None:
        """Records just committed, in sequence order; [] forgets those handed over before."""
        with self._lock:
            if records:
                self._records.extend(records)
            else:
                self._records.clear()
                self.forgot = True

    def take(self, after: int, limit: int, max_bytes: int = MAX_BATCH_BYTES) -> list[Record]:
        """Up to `limit` records (and `max_bytes`) continuing right after sequence `after`, or [] (then
        the outbox has them)."""
        records: list[Record] = []
        size = 0
        with self._lock:
            while len(records) < limit and self._records:
                record = self._records.popleft()
                expected = (records[-1].sequence if records else after) + 1
                if record.sequence < expected:
                    continue  # already sent (read from the outbox, or before a reconnect)
                size += record_bytes(record)
                if record.sequence > expected or (records and size > max_bytes):
                    self._records.appendleft(record)
                    break
                records.append(record)
        return records
