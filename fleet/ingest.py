"""Group commit for detection batches: many devices' batches, one SQLite transaction.

A batch is a device's records of any kind (`common.records.Record`: frames, object events, counts,
snapshots), as `PublishDetections` received them; the store sorts them out (`fleet.object_rows`).

Each PublishDetections handler `submit()`s its batch and awaits its own result. One writer
task takes everything queued since its last commit and runs `FleetStore.store_frames_many`
on the store's thread: one transaction for all of them. Then it resolves each caller's
future with that caller's `StoreResult` (acked sequence, stored, duplicates: exactly what
`store_frames` would have said) or that caller's error (an unknown device, a bad sequence),
so one device's bad batch never fails the others.

While one group commits the next one gathers, so the groups grow with the load and the
commits per second stay few; a batch that arrives alone commits at once. An ack still
means "committed": a future is resolved only after its group's transaction returned.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field

from edgefleet.common.records import Record

from .detection_store import StoreResult
from .errors import FailedPrecondition

logger = logging.getLogger(__name__)

PUBLISH_PIPELINE = 4
"""Batches of one PublishDetections stream that may wait for their commits at once. Raising it lets
a device catch up faster after a stall; each one is memory held until it commits."""

MAX_GROUP_FRAMES = 8192
"""Records (frames and the others) per transaction at most. Raising it makes fewer, longer commits (each ack
waits for the whole group); lowering it shortens the longest wait but commits more often under load."""


@dataclass
class IngestStats:
    """What the writer did so far: its groups, batches, records (`frames`: of every kind), and time spent
    committing."""

    groups: int = 0
    batches: int = 0
    frames: int = 0
    failed_batches: int = 0
    commit_s: float = 0.0  # waiting for the store's thread included
    slowest_commit_s: float = 0.0
    largest_group: int = 0

    def summary(self) -> str:
        mean = self.batches / self.groups if self.groups else 0.0
        commit_ms = 1000 * self.commit_s / self.groups if self.groups else 0.0
        return (f"{self.groups} commits, {self.batches} batches ({mean:.1f} per commit, at most "
                f"{self.largest_group}), {self.frames} frames, {commit_ms:.2f} ms per commit (slowest "
                f"{1000 * self.slowest_commit_s:.0f} ms), {self.failed_batches} batches refused")


@dataclass
class _Pending:
    device_id: str
    frames: list[Record]
    future: asyncio.Future = field(repr=False)


class IngestWriter:
    """One writer task that group-commits queued batches through `db.store_frames_many`.

    `db` runs store methods on the store's one thread (`fleet.server.AsyncStore`), so the
    writer's transactions are serialised with every other store call.
    `start()` in the event loop before the first `submit()`; `stop()` commits what is
    queued, then ends the task.
    """

    def __init__(self, db, max_group_frames: int = MAX_GROUP_FRAMES):
        if max_group_frames < 1:
            raise ValueError(f"max_group_frames must be >= 1, got {max_group_frames}")
        self.db = db
        self.max_group_frames = max_group_frames
        self.stats = IngestStats()
        self._pending: collections.deque[_Pending] = collections.deque()
        self._wake = asyncio.Event()  # made again by start(), in the event loop that runs the writer
        self._task: asyncio.Task | None = None
        self._stopping = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._stopping

    def start(self) -> None:
        if self._task is not None:
            return
        self._wake = asyncio.Event()
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="ingest-writer")

    async def stop(self) -> None:
        """Commit what is queued, then end the writer; later `submit()`s are refused."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            await self._task
        finally:
            self._task = None
            logger.info("ingest writer stopped: %s", self.stats.summary())

    async def submit(self, device_id: str, frames: list[Record]) -> StoreResult:
        """Queue one device's batch for the next group commit; its result once committed.

        Raises what `store_frames` would raise for this batch alone (NotFound, InvalidArgument).
        Cancelling the wait does not take the batch back: it may still commit, and a replay
        of it is idempotent.
        """
        return await self.enqueue(device_id, frames)

    def enqueue(self, device_id: str, frames: list[Record]) -> asyncio.Future:
        """`submit` without the wait: the batch is queued now (batches commit in the order they
        were queued), the future resolves once its group committed."""
        if not self.running:
            raise FailedPrecondition("the ingest writer is not running (controller starting or stopping)")
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(device_id, frames, future))
        self._wake.set()
        return future

    def _take_group(self) -> list[_Pending]:
        group = [self._pending.popleft()]
        frames = len(group[0].frames)
        while self._pending and frames + len(self._pending[0].frames) <= self.max_group_frames:
            item = self._pending.popleft()
            frames += len(item.frames)
            group.append(item)
        return group

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            group = self._take_group()
            started = time.perf_counter()
            try:
                results = await self.db.store_frames_many([(p.device_id, p.frames) for p in group])
            except Exception as err:  # the store failed as a whole (disk full, I/O): tell every caller
                logger.exception("group commit of %d batches failed", len(group))
                results = [err] * len(group)
            self._count(group, results, time.perf_counter() - started)
            for pending, result in zip(group, results):
                if pending.future.done():  # the caller went away; its batch is committed all the same
                    continue
                if isinstance(result, BaseException):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)

    def _count(self, group: list[_Pending], results: list, seconds: float) -> None:
        stats = self.stats
        stats.groups += 1
        stats.batches += len(group)
        stats.frames += sum(len(p.frames) for p in group)
        stats.failed_batches += sum(isinstance(r, BaseException) for r in results)
        stats.commit_s += seconds
        stats.largest_group = max(stats.largest_group, len(group))
        stats.slowest_commit_s = max(stats.slowest_commit_s, seconds)
        logger.debug("committed %d batches in %.2f ms", len(group), 1000 * seconds)
