"""The loop's records on their way into the outbox: grouped, committed on the writer's thread, counted.

Records are of every kind the outbox keeps (common.records.Record: frames, object events, counts,
snapshots); `frames` and `detections` count the frames only. The loop adds each tick's records;
every `commit_interval_s` (RunOptions) the group goes to the outbox writer
(agent.outbox.OutboxWriter), which commits it on its own thread. A record counts as produced once
committed: then the listeners get it (the link sends it from memory, MQTT publishes its events and
snapshots), still on the writer's thread.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from edgefleet.common.records import FrameRecord, Record

from .outbox import Outbox, OutboxWriter

Listener = Callable[[list[Record], int], None]
"""`listener(records, dropped)` after each commit, on the writer's thread (`dropped`: the oldest
records the outbox dropped in that commit to stay within its bounds)."""


class Recorder:
    def __init__(self, outbox: Outbox, commit_interval_s: float, listeners: Sequence[Listener] = ()):
        self.outbox = outbox
        """The pipeline's side of the outbox: it appends and enforces the bounds (`outbox.dropped`)."""
        self.commit_interval_s = commit_interval_s
        self._listeners = list(listeners)
        self.dropped_before = outbox.dropped_total() - outbox.dropped
        """Records the outbox dropped in earlier runs of this device."""
        self.frames = self.detections = 0  # frames committed, and their objects
        self.records = 0
        """Records of every kind committed."""
        self.depth = 0
        """Committed records not yet acknowledged, as counted on commits (read back now and then)."""
        self._pending: list[Record] = []
        self._handed_over = 0  # records given to the writer
        self._last_commit = time.monotonic()
        self._writer: OutboxWriter | None = None

    def start(self) -> None:
        self._writer = OutboxWriter(self.outbox, self._committed)

    def close(self) -> None:
        """Commit what the writer still has and end its thread (after `start`)."""
        if self._writer is not None:
            self._writer.close()

    @property
    def counted(self) -> int:
        """Records produced so far, committed or not."""
        return self._handed_over + len(self._pending)

    def add(self, records: Sequence[Record]) -> None:
        if records:
            self._pending += records

    def due(self) -> bool:
        """Whether `commit_interval_s` has passed since the last commit."""
        return time.monotonic() - self._last_commit >= self.commit_interval_s

    def commit_if_due(self) -> None:
        if self._pending and self.due():
            self.commit()

    def commit(self) -> None:
        """Hand the pending records to the outbox writer; they count as produced once it committed them."""
        self._last_commit = time.monotonic()
        if not self._pending or self._writer is None:
            return
        records, self._pending = self._pending, []
        self._handed_over += len(records)
        self._writer.put(records)

    def flush(self) -> None:
        """Return once everything handed over is committed."""
        if self._writer is not None:
            self._writer.flush()

    def _committed(self, records: list[Record], dropped: int) -> None:
        for listener in self._listeners:
            listener(records, dropped)
        frames = [r for r in records if isinstance(r, FrameRecord)]
        self.frames += len(frames)
        self.detections += sum(len(r.objects) for r in frames)
        self.records += len(records)
        self.depth += len(records) - dropped
        if self.records % 50 < len(records):
            self.depth = self.outbox.depth()

    def drain(self, timeout_s: float, failed: Callable[[], bool]) -> int:
        """Wait for the controller to acknowledge everything, up to `timeout_s` (or until `failed()`);
        the records left."""
        deadline = time.monotonic() + timeout_s
        left = self.outbox.depth()
        while left and time.monotonic() < deadline and not failed():
            time.sleep(0.05)
            left = self.outbox.depth()
        self.depth = left
        return left
