"""Health history and retention on both backends, with the clock passed in (`now=`); and on PostgreSQL,
the day partitions of detections: made ahead, dropped whole once every frame in them expired."""
from __future__ import annotations

import asyncio
import calendar
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from edgefleet.fleet.async_store import AsyncStore
from edgefleet.fleet.errors import InvalidArgument, NotFound
from edgefleet.fleet.retention import RetentionPolicy, RetentionSweeper

from .test_detections import enroll, frames, sql

T0 = 1_699_999_200  # a whole hour (2023-11-14 22:00 UTC)
MINUTE, HOUR, DAY = 60, 3600, 86_400
TIERS = (0, 60, 3600)


def beat(store, device_id: str, t: float, **health) -> None:
    store.record_heartbeat(device_id, health, None, now=t)


def thin(store, device_id, now, raw_s=DAY, minute_s=7 * DAY, keep_s=90 * DAY):
    return store.rollup_health(device_id, now=now, raw_keep_s=raw_s, minute_keep_s=minute_s, keep_s=keep_s)


def health_rows(store, device_id, resolution_s=None) -> list[dict]:
    """The device's health rows of one tier (or all, finest last), each tier by time."""
    tiers = TIERS if resolution_s is None else (resolution_s,)
    return [row for tier in tiers for row in store.health_history(device_id, 0, 1e12, resolution_s=tier)]


def store_old_frames(store, device_id, n, received, first_sequence=1, capture_base=1000.0):
    store.store_frames(device_id, frames(*range(first_sequence, first_sequence + n), objects=1,
                                         capture_base=capture_base))
    sql(store, "update detections set received = %s where device_id = %s and sequence >= %s",
        [received, device_id, first_sequence])


# ---- raw samples from heartbeats ----


def test_a_heartbeat_appends_one_raw_sample_with_missing_fields_as_zero(store):
    device_id = enroll(store)
    # proto JSON: uint64 fields arrive as strings, unset fields are absent
    health = {"fps": 12.5, "inference_ms_p50": 9.0, "frames_dropped": "7", "outbox_depth": "3",
              "time": "2023-11-14T22:00:00Z", "streams": [{"stream_id": "cam0"}]}
    device = store.record_heartbeat(device_id, health, {"detect_every": 2}, now=T0 + 5)
    assert (device.health, device.plan, device.last_seen) == (health, {"detect_every": 2}, T0 + 5)
    (row,) = health_rows(store, device_id)
    assert row == {"device_id": device_id, "time": T0 + 5, "resolution_s": 0, "fps": 12.5, "detect_fps": 0,
                   "inference_ms_p95": 0, "latency_ms_p95": 0, "cpu_percent": 0, "temperature_c": 0,
                   "frames_dropped": 7, "outbox_depth": 3}


def test_a_heartbeat_with_garbage_numbers_stores_zeros(store):
    device_id = enroll(store)
    beat(store, device_id, T0, fps="fast", cpu_percent=math.nan, temperature_c=None, frames_dropped="x")
    (row,) = health_rows(store, device_id)
    assert (row["fps"], row["cpu_percent"], row["temperature_c"], row["frames_dropped"]) == (0, 0, 0, 0)


def test_a_heartbeat_for_an_unknown_device_is_not_found_and_stores_nothing(store):
    with pytest.raises(NotFound, match="nope"):
        store.record_heartbeat("nope", {"fps": 1.0}, None, now=T0)
    assert sql(store, "select count(*) from health_samples") == [(0,)]


# ---- rollup ----


def test_raw_samples_roll_up_into_minute_means_and_maxima(store):
    device_id = enroll(store)
    for t, fps, dropped, depth in [(0, 10, 1, 40), (20, 20, 5, 10), (40, 30, 3, 0), (60, 6, 0, 2), (80, 8, 9, 1)]:
        beat(store, device_id, T0 + t, fps=fps, cpu_percent=fps * 2, frames_dropped=str(dropped),
             outbox_depth=str(depth))
    beat(store, device_id, T0 + 130, fps=99)  # a minute not yet a day old

    counts = thin(store, device_id, now=T0 + DAY + 125)

    assert counts == {"rolled": 5, "written": 2, "expired": 0}
    minutes = health_rows(store, device_id, 60)
    assert [(r["time"], r["fps"], r["cpu_percent"], r["frames_dropped"], r["outbox_depth"]) for r in minutes] == [
        (T0, 20.0, 40.0, 5, 40), (T0 + 60, 7.0, 14.0, 9, 2),
    ]
    assert [r["time"] for r in health_rows(store, device_id, 0)] == [T0 + 130]


def test_a_minute_still_filling_at_the_cutoff_waits_until_it_is_whole(store):
    device_id = enroll(store)
    beat(store, device_id, T0 + 130, fps=10)
    assert thin(store, device_id, now=T0 + DAY + 150)["rolled"] == 0  # cutoff inside [120, 180)
    beat(store, device_id, T0 + 170, fps=20)
    assert thin(store, device_id, now=T0 + DAY + 180) == {"rolled": 2, "written": 1, "expired": 0}
    (minute,) = health_rows(store, device_id, 60)
    assert (minute["time"], minute["fps"]) == (T0 + 120, 15.0)


def test_rolling_up_twice_changes_nothing(store):
    device_id = enroll(store)
    for t in range(0, 2 * HOUR, 30):
        beat(store, device_id, T0 + t, fps=t % 7, outbox_depth=t)
    now = T0 + 7 * DAY + 90 * MINUTE
    thin(store, device_id, now=now)
    before = health_rows(store, device_id)
    assert thin(store, device_id, now=now) == {"rolled": 0, "written": 0, "expired": 0}
    assert thin(store, device_id, now=now + 59) == {"rolled": 0, "written": 0, "expired": 0}
    assert health_rows(store, device_id) == before


def test_minutes_roll_up_into_hours_and_hours_expire(store):
    device_id = enroll(store)
    samples = [(t, float(t // 30 % 11), t // 30 % 13) for t in range(0, 2 * HOUR, 30)]  # 240, 2 per minute
    for t, fps, dropped in samples:
        beat(store, device_id, T0 + t, fps=fps, frames_dropped=dropped)

    counts = thin(store, device_id, now=T0 + 7 * DAY + 2 * HOUR + 30 * MINUTE)

    assert counts == {"rolled": 240 + 120, "written": 120 + 2, "expired": 0}
    hours = health_rows(store, device_id)
    assert [(r["resolution_s"], r["time"]) for r in hours] == [(3600, T0), (3600, T0 + HOUR)]
    for hour, row in zip((0, 1), hours):
        in_hour = [(fps, dropped) for t, fps, dropped in samples if t // HOUR == hour]
        assert row["fps"] == pytest.approx(sum(f for f, _ in in_hour) / len(in_hour))
        assert row["frames_dropped"] == max(d for _, d in in_hour)

    assert thin(store, device_id, now=T0 + 90 * DAY + 30 * MINUTE)["expired"] == 1
    assert [r["time"] for r in health_rows(store, device_id)] == [T0 + HOUR]
    assert thin(store, device_id, now=T0 + 10_000 * DAY, keep_s=None)["expired"] == 0  # None: forever


def test_a_late_sample_for_a_minute_already_written_does_not_write_it_twice(store):
    device_id = enroll(store)
    beat(store, device_id, T0 + 10, fps=10)
    thin(store, device_id, now=T0 + DAY + MINUTE)
    beat(store, device_id, T0 + 20, fps=50)  # the clock stepped back a day
    assert thin(store, device_id, now=T0 + DAY + MINUTE) == {"rolled": 1, "written": 0, "expired": 0}
    assert [(r["time"], r["fps"]) for r in health_rows(store, device_id)] == [(T0, 10.0)]


def test_tiers_that_do_not_nest_are_refused(store):
    device_id = enroll(store)
    with pytest.raises(InvalidArgument, match="nest"):
        thin(store, device_id, now=T0, raw_s=2 * DAY, minute_s=DAY)


def test_rollup_touches_only_the_named_device(store):
    a, b = enroll(store, "hw-a"), enroll(store, "hw-b")
    for device_id in (a, b):
        beat(store, device_id, T0, fps=1)
    thin(store, a, now=T0 + 2 * DAY)
    assert [r["resolution_s"] for r in health_rows(store, a)] == [60]
    assert [r["resolution_s"] for r in health_rows(store, b)] == [0]


# ---- history ----


@pytest.fixture
def six_hours(store):
    """Samples every 30 s for 6 h, thinned with raw kept 1 h, minutes 3 h: 3 hours, 120 minutes, 120 raw."""
    device_id = enroll(store)
    for t in range(0, 6 * HOUR, 30):
        beat(store, device_id, T0 + t, fps=t / 30)
    thin(store, device_id, now=T0 + 6 * HOUR, raw_s=HOUR, minute_s=3 * HOUR, keep_s=None)
    return device_id


def test_history_takes_each_part_of_the_range_from_the_finest_tier_that_holds_it(store, six_hours):
    rows = store.health_history(six_hours, T0, T0 + 6 * HOUR)
    assert [r["resolution_s"] for r in rows] == [3600] * 3 + [60] * 120 + [0] * 120
    times = [r["time"] for r in rows]
    assert times == sorted(times) and times[0] == T0 and times[-1] == T0 + 6 * HOUR - 30
    recent = store.health_history(six_hours, T0 + 4 * HOUR, T0 + 6 * HOUR)
    assert [r["resolution_s"] for r in recent] == [60] * 60 + [0] * 120


@pytest.mark.parametrize(("resolution_s", "since", "expected"), [
    (3600, T0, 3), (60, T0, 120), (0, T0, 120), (0, T0 + 5 * HOUR + 30 * MINUTE, 60), (60, T0 + 5 * HOUR, 0),
])
def test_history_at_one_resolution(store, six_hours, resolution_s, since, expected):
    rows = store.health_history(six_hours, since, T0 + 6 * HOUR, resolution_s=resolution_s)
    assert len(rows) == expected and {r["resolution_s"] for r in rows} <= {resolution_s}


def test_history_refuses_bad_arguments(store, six_hours):
    with pytest.raises(InvalidArgument, match="resolution_s"):
        store.health_history(six_hours, T0, T0 + HOUR, resolution_s=10)
    with pytest.raises(InvalidArgument, match="before since"):
        store.health_history(six_hours, T0 + HOUR, T0)
    with pytest.raises(NotFound):
        store.health_history("nope", T0, T0 + HOUR)


# ---- detections and events ----


def test_old_detections_go_in_chunks_and_leave_the_counters_right(store):
    a, b = enroll(store, "hw-a"), enroll(store, "hw-b")
    store_old_frames(store, a, 15, received=T0 - 2 * DAY)
    store_old_frames(store, b, 10, received=T0 - 3 * DAY)
    store_old_frames(store, a, 5, received=T0, first_sequence=16)  # recent: stays

    chunks = [store.delete_detections_before(T0 - DAY, limit=10) for _ in range(4)]

    assert chunks == [10, 10, 5, 0]
    assert (store.get_device(a).detections_stored, store.get_device(b).detections_stored) == (5, 0)
    frames_left, total = store.list_detections(a)
    assert [f.sequence for f in frames_left] == [16, 17, 18, 19, 20] and total == 5
    assert store.get_device(a).acked_sequence == 20
    assert store.store_frames(a, frames(3, 21)).duplicates == 0  # a gone sequence is stored again


def test_old_events_go_in_chunks(store):
    for i in range(7):
        store.add_event("k", "old", when=T0 - DAY - i)
    store.add_event("k", "new", when=T0)
    assert [store.delete_events_before(T0 - DAY + 1, limit=3) for _ in range(4)] == [3, 3, 1, 0]
    assert [e.message for e in store.list_events()] == ["new"]


def test_a_sweep_removes_what_the_policy_says_in_chunks(store_factory):
    store = store_factory()
    a, b = enroll(store, "hw-a"), enroll(store, "hw-b")
    store_old_frames(store, a, 25, received=T0 - 31 * DAY)
    store_old_frames(store, a, 3, received=T0 - 29 * DAY, first_sequence=26)
    for _ in range(4):
        store.add_event("k", "old", when=T0 - 40 * DAY)
    for device_id in (a, b):
        for t in range(0, 10 * MINUTE, 5):
            beat(store, device_id, T0 - 2 * DAY + t, fps=1)
    db = AsyncStore(store)
    sweeper = RetentionSweeper(db, RetentionPolicy(chunk_rows=10))
    try:
        report = asyncio.run(sweeper.sweep(now=T0))
        again = asyncio.run(sweeper.sweep(now=T0))
    finally:
        db._pool.shutdown(wait=True)
    assert (report.detections, report.events, report.complete) == (25, 4, True)
    assert report.chunks == 3 + 1 + 3  # 10, 10, 5 detections; 4 events; none of objects, counts, snapshots
    assert (report.objects, report.counts, report.snapshots) == (0, 0, 0)
    assert (report.health_rolled, report.health_written) == (2 * 120, 2 * 10)
    assert (again.detections, again.events, again.health_rolled, again.health_written) == (0, 0, 0, 0)
    assert sweeper.sweeps == 2 and sweeper.last is again
    assert store_factory().get_device(a).detections_stored == 3  # as another replica, or after a restart, reads it


# ---- PostgreSQL: day partitions ----



def partitions(store) -> list[str]:
    return sorted(name for (name,) in sql(store, "select c.relname from pg_inherits as i join pg_class as c"
                                                 " on c.oid = i.inhrelid where i.inhparent = 'detections'::regclass"))


def day_names(first: str, days: int) -> list[str]:
    """The names of the day partitions of `days` UTC days from `first` (YYYYMMDD) on."""
    start = calendar.timegm(time.strptime(first, "%Y%m%d"))
    return [f"detections_p{time.strftime('%Y%m%d', time.gmtime(start + k * DAY))}" for k in range(days)]


def test_the_days_around_now_have_partitions_made_once_by_either_replica(pg_replicas):
    """A store makes yesterday's to next week's partitions when it opens; for another `now`, two replicas
    asked at the same moment make each missing one once between them."""
    a, b = pg_replicas
    today = time.strftime("%Y%m%d", time.gmtime(time.time() - DAY))
    assert set(day_names(today, 9)) <= set(partitions(a))
    start = threading.Barrier(2)

    def maintain(store):
        start.wait(timeout=10)
        return store.maintain_partitions(T0)

    with ThreadPoolExecutor(2) as pool:
        made = list(pool.map(maintain, (a, b)))
    assert sorted(made[0] + made[1]) == day_names("20231113", 9)
    assert a.maintain_partitions(T0) == [] and b.maintain_partitions(T0) == []


def test_a_day_whose_frames_sit_in_the_default_partition_gets_none(pg_replicas, caplog):
    a, _ = pg_replicas
    device = enroll(a)
    a.store_frames(device, frames(1, 2, capture_base=T0 + 3 * DAY))  # 2023-11-17: no partition yet
    with caplog.at_level(logging.WARNING, logger="edgefleet.fleet.pg.detections"):
        made = a.maintain_partitions(T0)
    assert made == [name for name in day_names("20231113", 9) if name != "detections_p20231117"]
    assert "no partition detections_p20231117: detections_default holds frames captured that day" in caplog.text
    assert [f.sequence for f in a.list_detections(device)[0]] == [1, 2]


def test_retention_drops_whole_expired_days_and_deletes_the_rest_row_by_row(pg_replicas):
    """Days whose every frame was received before the cutoff go whole (their records counted off their
    devices); a day with one frame received since stays, and the expired frames elsewhere go by rows."""
    a, b = pg_replicas
    a.maintain_partitions(T0)  # 2023-11-13 .. 2023-11-21
    one, two = enroll(a, "hw-1"), enroll(a, "hw-2")
    store_old_frames(a, one, 15, received=T0, capture_base=T0)  # 2023-11-14
    store_old_frames(a, two, 10, received=T0, capture_base=T0 + DAY)  # 2023-11-15
    store_old_frames(a, two, 4, received=T0, first_sequence=11)  # captured in 1970: the default partition
    store_old_frames(a, one, 3, received=T0, first_sequence=16, capture_base=T0 + 2 * DAY)  # 2023-11-16
    a.store_frames(one, frames(19, capture_base=T0 + 2 * DAY))  # received now: 2023-11-16 stays

    chunks = [b.delete_detections_before(T0 + 30 * DAY, limit=10) for _ in range(4)]

    assert chunks == [15, 10, 7, 0]
    assert "detections_p20231114" not in partitions(a) and "detections_p20231115" not in partitions(a)
    assert "detections_p20231116" in partitions(a) and "detections_default" in partitions(a)
    assert [d for d in day_names("20231113", 9) if d in partitions(a)] == ["detections_p20231116"]
    assert (a.get_device(one).detections_stored, a.get_device(two).detections_stored) == (1, 0)
    assert [f.sequence for f in a.list_detections(one)[0]] == [19]
    assert a.store_frames(two, frames(1, capture_base=T0 + DAY)).stored == 1  # its day now in the default
