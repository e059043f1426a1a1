"""Retention: old detections and events go, objects, counts and snapshots after their own times, device
health history thins out with age.

Health history lives in three tiers of `health_samples` (see `FleetStore.rollup_health`):

    raw heartbeats (resolution 0)   kept `raw_health_hours`    (24 h: every sample of the last day)
    1-minute rows (resolution 60)   kept `minute_health_days`  (7 d: a week's charts at minute detail)
    1-hour rows (resolution 3600)   kept `health_days`         (90 d; 0 keeps them forever)

Rows are means of the float fields and the max of `frames_dropped` and `outbox_depth`. A
`health_days` shorter than a finer tier shortens that tier too. Detections (by when the
controller received them) and events older than their retention are deleted in chunks, each its
own transaction, so the store's single thread goes back to ingest between chunks. Objects (by when
last seen) and count rows (by their minute) are kept `objects_days` (365: a year of counts to compare),
object pictures `snapshots_days` (30: the JPEGs are most of the bytes), never longer than their objects;
a stored JPEG goes once no picture refers to it.

`RetentionSweeper` runs the whole sweep shortly after the controller starts and then every
`every_s` seconds, through the controller's `AsyncStore`.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .errors import ConfigError

logger = logging.getLogger(__name__)

DAY_S = 86_400.0
HOUR_S = 3_600.0
FIRST_SWEEP_DELAY_S = 10.0
"""The first sweep waits this long after start (or `every_s`, if shorter): reconnecting agents go first."""


def _check_days(value: object, what: str, *, zero_means_forever: bool) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        if value > 0 or (zero_means_forever and value == 0):
            return
    if zero_means_forever:
        raise ConfigError(f"retention: {what} must be a number >= 0 (0 keeps forever), got {value!r}")
    raise ConfigError(f"retention: {what} must be a number > 0, got {value!r}")


@dataclass(frozen=True)
class RetentionPolicy:
    """How long the controller keeps what it stores; 0 days keeps that kind forever.

    Raising `detections_days` or `health_days` keeps more history at the cost of database size
    (detections dominate: one row per frame per device). `raw_health_hours` and
    `minute_health_days` trade chart detail for rows: a device heartbeating every 5 s writes
    17,280 raw rows a day, 1,440 minute rows, 24 hour rows.
    """

    detections_days: float = 30
    health_days: float = 90
    raw_health_hours: float = 24
    minute_health_days: float = 7
    events_days: float | None = None
    """None: the same as `detections_days`."""
    objects_days: float = 365
    """Objects and count rows; a row per object and per minute per (stream, zone or line, label, direction)."""
    snapshots_days: float = 30
    """Object pictures (JPEGs, the bulk of their bytes); never kept longer than `objects_days`."""
    chunk_rows: int = 10_000
    """Rows deleted per transaction: smaller chunks hold the store's thread for less time each."""

    def __post_init__(self) -> None:
        _check_days(self.detections_days, "detections_days", zero_means_forever=True)
        _check_days(self.health_days, "health_days", zero_means_forever=True)
        if self.events_days is not None:
            _check_days(self.events_days, "events_days", zero_means_forever=True)
        _check_days(self.objects_days, "objects_days", zero_means_forever=True)
        _check_days(self.snapshots_days, "snapshots_days", zero_means_forever=True)
        _check_days(self.raw_health_hours, "raw_health_hours", zero_means_forever=False)
        _check_days(self.minute_health_days, "minute_health_days", zero_means_forever=False)
        if isinstance(self.chunk_rows, bool) or not isinstance(self.chunk_rows, int) or self.chunk_rows < 1:
            raise ConfigError(f"retention: chunk_rows must be an integer >= 1, got {self.chunk_rows!r}")

    def detections_cutoff(self, now: float) -> float | None:
        """Detections received before this go; None: kept forever."""
        return now - self.detections_days * DAY_S if self.detections_days else None

    def events_cutoff(self, now: float) -> float | None:
        days = self.detections_days if self.events_days is None else self.events_days
        return now - days * DAY_S if days else None

    def objects_cutoff(self, now: float) -> float | None:
        """Objects last seen, and count minutes started, before this go; None: kept forever."""
        return now - self.objects_days * DAY_S if self.objects_days else None

    def snapshots_cutoff(self, now: float) -> float | None:
        """Object pictures taken before this go: the shorter of their own retention and their objects'."""
        cutoffs = [now - days * DAY_S for days in (self.snapshots_days, self.objects_days) if days]
        return max(cutoffs) if cutoffs else None

    def health_keep_s(self) -> tuple[float, float, float | None]:
        """(raw, minute, hour) tier ages in seconds, nested: no tier outlives a coarser one."""
        keep_s = self.health_days * DAY_S if self.health_days else None
        minute_s = self.minute_health_days * DAY_S
        if keep_s is not None:
            minute_s = min(minute_s, keep_s)
        return min(self.raw_health_hours * HOUR_S, minute_s), minute_s, keep_s


def days_arg(flag: str) -> Callable[[str], float]:
    """An argparse `type` for a retention flag (days >= 0, 0 forever) whose message names the flag."""
    def parse(value: str) -> float:
        try:
            days = float(value)
        except ValueError:
            days = math.nan
        if not (math.isfinite(days) and days >= 0):
            raise argparse.ArgumentTypeError(f"{flag} must be a number of days >= 0 (0 keeps forever), got {value!r}")
        return days

    return parse


@dataclass
class SweepReport:
    """What one sweep removed. `complete` is False when `stop()` cut it short."""

    detections: int = 0
    events: int = 0
    objects: int = 0
    counts: int = 0
    snapshots: int = 0
    """Object pictures and the JPEGs no picture refers to any more."""
    health_rolled: int = 0
    health_written: int = 0
    health_expired: int = 0
    chunks: int = 0
    longest_chunk_s: float = 0.0
    seconds: float = 0.0
    complete: bool = True


class RetentionSweeper:
    """`start()` sweeps in the background (first after a short delay, then every `every_s`) until `stop()`.

    `db` is the controller's `AsyncStore`: every chunk is one awaited call on the store's thread.
    """

    def __init__(self, db, policy: RetentionPolicy, every_s: float = 3600.0):
        if isinstance(every_s, bool) or not isinstance(every_s, (int, float)) or not (
            math.isfinite(every_s) and every_s > 0
        ):
            raise ConfigError(f"retention: every_s must be a number of seconds > 0, got {every_s!r}")
        self.db = db
        self.policy = policy
        self.every_s = float(every_s)
        self.first_delay_s = min(FIRST_SWEEP_DELAY_S, self.every_s)
        self.sweeps = 0
        self.last: SweepReport | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="retention")

    async def stop(self) -> None:
        """Stop after the chunk in progress (if any) commits."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        delay = self.first_delay_s
        while not await self._stopped_within(delay):
            try:
                await self.sweep()
            except Exception:  # a failed sweep is retried at the next one
                logger.exception("retention sweep failed")
            delay = self.every_s

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    async def sweep(self, now: float | None = None) -> SweepReport:
        """One pass: old detections and events, then each device's health history. Returns what went."""
        now = time.time() if now is None else now
        started = time.monotonic()
        report = SweepReport()
        policy = self.policy
        cutoff = policy.detections_cutoff(now)
        if cutoff is not None:
            report.detections = await self._delete_in_chunks(self.db.delete_detections_before, cutoff, report)
        cutoff = policy.events_cutoff(now)
        if cutoff is not None and not self._stop.is_set():
            report.events = await self._delete_in_chunks(self.db.delete_events_before, cutoff, report)
        await self._sweep_objects(now, report)
        raw_keep_s, minute_keep_s, keep_s = policy.health_keep_s()
        for device_id in await self.db.last_seen_by_device():
            if self._stop.is_set():
                break
            counts = await self.db.rollup_health(
                device_id, now=now, raw_keep_s=raw_keep_s, minute_keep_s=minute_keep_s, keep_s=keep_s
            )
            report.health_rolled += counts["rolled"]
            report.health_written += counts["written"]
            report.health_expired += counts["expired"]
        report.complete = not self._stop.is_set()
        report.seconds = time.monotonic() - started
        self.sweeps += 1
        self.last = report
        removed = (report.detections or report.events or report.objects or report.counts or report.snapshots
                   or report.health_rolled or report.health_expired)
        logger.log(
            logging.INFO if removed else logging.DEBUG,
            "retention sweep%s: removed %d detections, %d events, %d objects, %d count rows, %d snapshot rows;"
            " health: %d samples rolled into %d rows, %d expired (%.2f s, %d chunks, longest %.0f ms)",
            "" if report.complete else " (cut short by stop)", report.detections, report.events, report.objects,
            report.counts, report.snapshots,
            report.health_rolled, report.health_written, report.health_expired, report.seconds,
            report.chunks, report.longest_chunk_s * 1000,
        )
        return report

    async def _sweep_objects(self, now: float, report: SweepReport) -> None:
        """Objects and counts past `objects_days`, pictures past `snapshots_days` (and the JPEGs they left)."""
        cutoff = self.policy.objects_cutoff(now)
        if cutoff is not None and not self._stop.is_set():
            report.objects = await self._delete_in_chunks(self.db.delete_objects_before, cutoff, report)
        if cutoff is not None and not self._stop.is_set():
            report.counts = await self._delete_in_chunks(self.db.delete_counts_before, cutoff, report)
        cutoff = self.policy.snapshots_cutoff(now)
        if cutoff is not None and not self._stop.is_set():
            report.snapshots = await self._delete_in_chunks(self.db.delete_snapshots_before, cutoff, report)

    async def _delete_in_chunks(self, delete: Callable[[float, int], Awaitable[int]], cutoff: float,
                                report: SweepReport) -> int:
        total = 0
        limit = self.policy.chunk_rows
        while not self._stop.is_set():
            started = time.monotonic()
            deleted = await delete(cutoff, limit)
            report.chunks += 1
            report.longest_chunk_s = max(report.longest_chunk_s, time.monotonic() - started)
            total += deleted
            if deleted < limit:
                break
        return total
