"""Health history and retention: the tables that grow with time, thinned and pruned by
`fleet.retention`. A mixin of `FleetStore` (same connection, same single thread)."""
from __future__ import annotations

import json
import math

from .errors import InvalidArgument
from .tables import StoreTables

SQLITE_MAX_INT = 2**63 - 1
"""SQLite's largest integer; uint64 fields on the wire can exceed it."""


def check_health_tiers(raw_keep_s: float, minute_keep_s: float, keep_s: float | None) -> None:
    """InvalidArgument unless the tiers' ages nest (`rollup_health`): no tier outlives a coarser one."""
    if not 0 <= raw_keep_s <= minute_keep_s <= (minute_keep_s if keep_s is None else keep_s):
        raise InvalidArgument(
            f"health tiers must nest: raw_keep_s {raw_keep_s} <= minute_keep_s {minute_keep_s} <= keep_s {keep_s}"
        )


HEALTH_RESOLUTIONS_S = (0, 60, 3600)
"""Tiers of `health_samples`: raw heartbeats, 1-minute and 1-hour rows (see `HistoryTables.rollup_health`)."""


def history_tiers(since: float, until: float, resolution_s: int | None) -> tuple[int, ...]:
    """The tiers a `health_history` request reads, finest first; InvalidArgument for a bad range or tier."""
    if until < since:
        raise InvalidArgument(f"until ({until}) is before since ({since})")
    if resolution_s is not None and resolution_s not in HEALTH_RESOLUTIONS_S:
        raise InvalidArgument(f"resolution_s must be one of {HEALTH_RESOLUTIONS_S}, got {resolution_s!r}")
    return HEALTH_RESOLUTIONS_S if resolution_s is None else (resolution_s,)


class HistoryTables(StoreTables):
    """Methods `FleetStore` gains."""

    HEALTH_RESOLUTIONS_S = HEALTH_RESOLUTIONS_S
    _HEALTH_MEANS = ("fps", "detect_fps", "inference_ms_p95", "latency_ms_p95", "cpu_percent", "temperature_c")
    _HEALTH_MAXIMA = ("frames_dropped", "outbox_depth")
    _HEALTH_INSERT = (
        "insert into health_samples (device_id, time, resolution_s, " + ", ".join(_HEALTH_MEANS + _HEALTH_MAXIMA)
        + ") values (?, ?, ?, " + ", ".join("?" * len(_HEALTH_MEANS + _HEALTH_MAXIMA)) + ")"
    )

    @classmethod
    def _health_values(cls, health: dict) -> list:
        """A HealthSample as a dict (proto JSON: uint64 fields arrive as strings) -> the history
        columns in `_HEALTH_INSERT` order; a missing, non-numeric or non-finite field is 0."""
        def number(name: str) -> float:
            try:
                value = float(health.get(name, 0))
            except (TypeError, ValueError):
                return 0.0
            return value if math.isfinite(value) else 0.0

        return [number(n) for n in cls._HEALTH_MEANS] + [min(int(number(n)), SQLITE_MAX_INT)
                                                          for n in cls._HEALTH_MAXIMA]

    def rollup_health(
        self, device_id: str, *, now: float, raw_keep_s: float, minute_keep_s: float, keep_s: float | None
    ) -> dict[str, int]:
        """Thin one device's health history, in one transaction.

        Raw samples older than `raw_keep_s` become one row per whole minute, minute rows older
        than `minute_keep_s` one row per whole hour: the mean of each float field, the max of
        frames_dropped and outbox_depth, stamped with the bucket's start; the rolled-up rows go.
        Only buckets that end before the cutoff are rolled up (a bucket still filling waits), and
        a bucket already written is never written again, so running it twice changes nothing.
        Then every row older than `keep_s` goes (None keeps them forever).

        Returns {"rolled": rows rolled up, "written": bucket rows written, "expired": rows deleted}.
        """
        check_health_tiers(raw_keep_s, minute_keep_s, keep_s)
        conn = self.db.conn
        columns = ", ".join(self._HEALTH_MEANS + self._HEALTH_MAXIMA)
        aggregates = ", ".join([f"avg({c})" for c in self._HEALTH_MEANS] + [f"max({c})" for c in self._HEALTH_MAXIMA])
        counts = {"rolled": 0, "written": 0, "expired": 0}

        def roll(source_s: int, target_s: int, keep: float) -> None:
            cutoff = int(now - keep) // target_s * target_s  # the start of the bucket still filling
            args = {"device": device_id, "source": source_s, "target": target_s, "cutoff": cutoff}
            counts["written"] += conn.execute(
                f"insert into health_samples (device_id, time, resolution_s, {columns})"
                f" select :device, bucket, :target, {aggregates} from ("
                "  select *, cast(time as integer) / :target * :target as bucket from health_samples"
                "  where device_id = :device and resolution_s = :source and time < :cutoff) as source"
                " where not exists (select 1 from health_samples as done where done.device_id = :device"
                "  and done.resolution_s = :target and done.time = source.bucket)"
                " group by bucket",
                args,
            ).rowcount
            counts["rolled"] += conn.execute(
                "delete from health_samples where device_id = :device and resolution_s = :source and time < :cutoff",
                args,
            ).rowcount

        def work() -> None:
            raw_s, minute_s, hour_s = self.HEALTH_RESOLUTIONS_S
            roll(raw_s, minute_s, raw_keep_s)
            roll(minute_s, hour_s, minute_keep_s)
            if keep_s is not None:
                counts["expired"] = conn.execute(
                    "delete from health_samples where device_id = ? and resolution_s in (?, ?, ?) and time < ?",
                    [device_id, *self.HEALTH_RESOLUTIONS_S, now - keep_s],
                ).rowcount

        self._transaction(work)
        return counts

    def delete_detections_before(self, cutoff: float, limit: int = 10_000) -> int:
        """Delete up to `limit` detection records received before `cutoff` (unix seconds), oldest
        first, in one transaction, taking them off their devices' `detections_stored`.

        Returns how many went: call again until it returns less than `limit`. Each call holds the
        store's thread only for one chunk, so heartbeats and ingest run in between.
        """
        conn = self.db.conn

        def work() -> int:
            rows = conn.execute(
                "select rowid, device_id from detections where received < ? order by received limit ?", [cutoff, limit]
            ).fetchall()
            if not rows:
                return 0
            conn.execute("delete from detections where rowid in (select value from json_each(?))",
                         [json.dumps([rowid for rowid, _ in rows])])
            per_device: dict[str, int] = {}
            for _, device_id in rows:
                per_device[device_id] = per_device.get(device_id, 0) + 1
            conn.executemany(
                "update devices set detections_stored = max(0, detections_stored - ?) where device_id = ?",
                [(n, device_id) for device_id, n in per_device.items()],
            )
            return len(rows)

        return self._transaction(work)

    def delete_events_before(self, cutoff: float, limit: int = 10_000) -> int:
        """Delete up to `limit` events older than `cutoff`, oldest first, in one transaction; how many went."""
        conn = self.db.conn
        return self._transaction(lambda: conn.execute(
            "delete from events where id in (select id from events where time < ? order by time limit ?)",
            [cutoff, limit],
        ).rowcount)

    def health_history(
        self, device_id: str, since: float, until: float, resolution_s: int | None = None
    ) -> list[dict]:
        """The device's health rows with `since <= time < until`, oldest first, as dicts of the
        `health_samples` columns (`resolution_s` says which tier each came from).

        With `resolution_s` (0 raw, 60, 3600) that tier only. Without, each part of the range
        comes from the finest tier that holds it: raw samples where they are still kept, minute
        rows before the oldest raw sample, hour rows before the oldest minute row.
        """
        self._require(device_id)
        tiers = history_tiers(since, until, resolution_s)
        rows: list[dict] = []
        upper = until
        for tier in tiers:
            cursor = self.db.execute(
                "select * from health_samples where device_id = ? and resolution_s = ? and time >= ? and time < ?"
                " order by time",
                [device_id, tier, since, upper],
            )
            names = [c[0] for c in cursor.description]
            rows[:0] = [dict(zip(names, row)) for row in cursor.fetchall()]  # coarser tiers are older
            oldest = self.db.execute(
                "select min(time) from health_samples where device_id = ? and resolution_s = ?", [device_id, tier]
            ).fetchone()[0]
            if oldest is not None:
                upper = min(upper, oldest)
            if upper <= since:
                break
        return rows
