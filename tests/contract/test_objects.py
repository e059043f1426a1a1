"""Objects, counts and snapshots on both backends: stored exactly once from mixed batches (replays add
nothing), objects keep their newest state, ListObjects pages without gaps or repeats, CountObjects buckets and
groups, pictures are stored once per JPEG; `--store-frames` and retention of each kind."""
from __future__ import annotations

import hashlib
import time

import pytest

from edgefleet.common.records import (
    CountRecord,
    CountRow,
    FrameRecord,
    ObjectEventRecord,
    ObjectRecord,
    SnapshotRecord,
    TrackedObject,
)
from edgefleet.fleet.detection_store import StoreResult
from edgefleet.fleet.errors import InvalidArgument, NotFound
from edgefleet.fleet.object_queries import CountBucketRow, CountQuery, ObjectCursor, ObjectQuery
from edgefleet.fleet.object_rows import FramePolicy

from .test_detections import enroll, sql

T0 = 1_764_979_200.0  # 2025-12-06 00:00 UTC: a day's start


def obj(object_id: str, last_seen: float, *, stream: str = "cam0", label: str = "person", zones=(), crossings=(),
        ended: bool = False, first_seen: float | None = None, score: float = 0.9) -> TrackedObject:
    return TrackedObject(object_id, stream, int(object_id.rsplit("-", 1)[-1]) if object_id[-1].isdigit() else 1,
                         label, 0, T0 if first_seen is None else first_seen, last_seen, score, (1.0, 2.0, 30.0, 40.0),
                         path=[(10.0, 20.0, T0), (12.5, 22.0, last_seen)], zones=list(zones),
                         crossings=list(crossings), frames=int(last_seen - T0) + 1, ended=ended)


def event(seq: int, o: TrackedObject, kind: str = "update") -> ObjectEventRecord:
    return ObjectEventRecord(kind, o, seq)


def counts(seq: int, *rows: tuple) -> CountRecord:
    """rows: (minute offset from T0 in minutes, kind, name, label, direction, count)"""
    return CountRecord([CountRow("cam0", int(T0) + 60 * m, kind, name, label, direction, n)
                        for m, kind, name, label, direction, n in rows], seq)


def frame(seq: int, index: int | None = None) -> FrameRecord:
    return FrameRecord("cam0", seq, seq if index is None else index, T0 + seq,
                       [ObjectRecord(1, 0, "person", 0.9, (1.0, 2.0, 3.0, 4.0))])


def snap(seq: int, object_id: str, jpeg: bytes, kind: str = "crop", t: float = T0) -> SnapshotRecord:
    return SnapshotRecord("cam0", object_id, kind, "person", t, jpeg, 0.9, seq)


def totals(store, **query) -> dict[tuple, int]:
    return {(r.start, r.device_id, r.stream_id, r.kind, r.name, r.direction): r.count
            for r in store.count_objects(CountQuery(**query))}


# ---- ingest of every kind ----


def test_a_mixed_batch_is_stored_and_acked_at_its_highest_sequence(store):
    device = enroll(store)
    batch = [frame(1), event(2, obj("o-1", T0 + 1), "new"), counts(3, (0, "line", "door", "person", "in", 2)),
             snap(4, "o-1", b"\xff\xd8jpeg-1")]
    assert store.store_frames(device, batch) == StoreResult(4, 4, 0)
    assert store.get_device(device).acked_sequence == 4
    assert store.get_device(device).detections_stored == 1
    (stored,) = store.list_objects(ObjectQuery())
    assert (stored.object_id, stored.device_id, stored.has_snapshot) == ("o-1", device, True)
    assert stored.path == [(10.0, 20.0, T0), (12.5, 22.0, T0 + 1)] and stored.best_box == (1.0, 2.0, 30.0, 40.0)
    assert totals(store) == {(None, "", "", "line", "door", "in"): 2}


def test_counts_are_added_exactly_once_across_replays(store):
    device = enroll(store)
    first = [counts(1, (0, "line", "door", "person", "in", 2), (0, "line", "door", "person", "out", 1))]
    second = [counts(2, (0, "line", "door", "person", "in", 3)), counts(3, (1, "zone", "queue", "person", "enter", 4))]
    store.store_frames(device, first)
    store.store_frames(device, second)
    result = store.store_frames(device, first + second)  # the agent resends everything after a reconnect
    assert result == StoreResult(3, 0, 3)
    store.store_frames_many([(device, second), (device, second)])  # twice in one group commit
    assert totals(store) == {(None, "", "", "line", "door", "in"): 5, (None, "", "", "line", "door", "out"): 1,
                             (None, "", "", "zone", "queue", "enter"): 4}


def test_every_kind_counts_once_in_records_stored_however_often_it_is_sent(store):
    """records_stored equals the acked sequence when nothing was lost: the exactly-once check tests with
    real agents make for objects, counts and snapshots as well as frames."""
    device = enroll(store)
    batch = [frame(1), event(2, obj("o-1", T0 + 1), "new"), counts(3, (0, "line", "door", "person", "in", 1)),
             snap(4, "o-1", b"\xff\xd8one"), frame(5)]
    store.store_frames(device, batch[:3])
    store.store_frames(device, batch)  # the first three again, after a reconnect
    store.store_frames_many([(device, batch[3:]), (device, batch)])  # and twice in one group commit
    assert sql(store, "select records_stored, acked_sequence from devices where device_id = %s", [device]) == [(5, 5)]


def test_an_object_keeps_its_newest_state_and_its_end(store):
    device = enroll(store)
    store.store_frames(device, [event(1, obj("o-1", T0 + 5, zones=["queue"])), event(2, obj("o-1", T0 + 9),
                                                                                     "end")])
    # an older state under a newer sequence (a resend from another outbox copy) changes nothing
    store.store_frames(device, [event(3, obj("o-1", T0 + 7, zones=["queue", "till"]))])
    (stored,) = store.list_objects(ObjectQuery())
    assert (stored.last_seen, stored.zones, stored.ended) == (T0 + 9, [], True)
    # a later state that says it has not ended (it cannot un-end) updates the rest
    store.store_frames(device, [event(4, obj("o-1", T0 + 12, zones=["till"]))])
    (stored,) = store.list_objects(ObjectQuery())
    assert (stored.last_seen, stored.zones, stored.ended) == (T0 + 12, ["till"], True)


def test_in_one_group_the_newest_event_of_an_object_wins(store):
    device = enroll(store)
    events = [event(1, obj("o-1", T0 + 3), "new"), event(2, obj("o-1", T0 + 8, zones=["till"])),
              event(3, obj("o-1", T0 + 6, zones=["queue"]))]
    store.store_frames_many([(device, events[:2]), (device, events[2:])])
    (stored,) = store.list_objects(ObjectQuery())
    assert (stored.last_seen, stored.zones) == (T0 + 8, ["till"])


def test_bad_records_are_refused_naming_the_field(store):
    device = enroll(store)
    for batch, field in [([counts(1, (0, "area", "x", "person", "in", 1))], "kind"),
                         ([CountRecord([CountRow("cam0", int(T0) + 7, "line", "x", "p", "in", 1)], 1)], "minute"),
                         ([snap(1, "o-1", b"jpeg", kind="live")], "kind"),
                         ([event(1, obj("o-1", T0), "moved")], "type"),
                         ([event(0, obj("o-1", T0))], "sequence"),
                         ([event(1, obj("o\x00-1", T0))], "NUL")]:
        with pytest.raises(InvalidArgument, match=field):
            store.store_frames(device, batch)
    assert store.get_device(device).acked_sequence == 0 and store.list_objects(ObjectQuery()) == []


# ---- ListObjects ----


def test_objects_page_newest_first_without_gaps_or_repeats(store):
    devices = [enroll(store, "hw-a"), enroll(store, "hw-b")]
    for device in devices:
        # ties on last_seen across devices and objects: the cursor must order them all the same
        store.store_frames(device, [event(i + 1, obj(f"o-{i}", T0 + (i // 3), label="car" if i % 2 else "person"))
                                    for i in range(12)])
    everything = store.list_objects(ObjectQuery(limit=1000))
    assert len(everything) == 24
    keys = [(-o.last_seen, o.device_id, o.object_id) for o in everything]
    assert keys == sorted(keys)
    paged, after = [], None
    while True:
        page = store.list_objects(ObjectQuery(limit=5, after=after))
        paged += page
        if len(page) < 5:
            break
        last = page[-1]
        after = ObjectCursor(last.last_seen, last.device_id, last.object_id)
    assert [(o.device_id, o.object_id) for o in paged] == [(o.device_id, o.object_id) for o in everything]


def test_object_filters(store):
    a, b = enroll(store, "hw-a"), enroll(store, "hw-b")
    store.store_frames(a, [event(1, obj("o-1", T0 + 10, zones=["queue"], crossings=[("door", "in", T0 + 4)])),
                           event(2, obj("o-2", T0 + 20, label="car", stream="cam1"), "end"),
                           event(3, obj("o-3", T0 + 30, first_seen=T0 + 25))])
    store.store_frames(b, [event(1, obj("o-1", T0 + 40, zones=["till"]))])

    def ids(**query) -> list[tuple[str, str]]:
        return [(o.device_id, o.object_id) for o in store.list_objects(ObjectQuery(**query))]

    assert ids(device_ids=(a,)) == [(a, "o-3"), (a, "o-2"), (a, "o-1")]
    assert ids(device_ids=()) == []
    assert ids(stream_id="cam1") == [(a, "o-2")] and ids(label="car") == [(a, "o-2")]
    assert ids(zone="queue") == [(a, "o-1")] and ids(zone="till") == [(b, "o-1")]
    assert ids(line="door") == [(a, "o-1")] and ids(line="gate") == []
    assert ids(since=T0 + 30) == [(b, "o-1"), (a, "o-3")]
    assert ids(until=T0 + 25) == [(b, "o-1"), (a, "o-2"), (a, "o-1")]
    assert (a, "o-2") not in ids(active=True) and len(ids(active=True)) == 3
    (crossed,) = store.list_objects(ObjectQuery(line="door"))
    assert crossed.crossings == [("door", "in", T0 + 4)]


# ---- CountObjects ----


def test_counts_are_bucketed_in_utc_and_grouped(store):
    a, b = enroll(store, "hw-a"), enroll(store, "hw-b")
    door = ("line", "door", "person", "in")
    store.store_frames(a, [counts(1, (0, *door, 1), (59, *door, 2), (60, *door, 4), (60 * 24, *door, 8))])
    store.store_frames(b, [counts(1, (1, *door, 16), (2, "zone", "queue", "person", "enter", 32))])
    hour = 3600.0
    assert totals(store, kind="line", bucket="hour") == {
        (T0, "", "", "line", "door", "in"): 1 + 2 + 16, (T0 + hour, "", "", "line", "door", "in"): 4,
        (T0 + 24 * hour, "", "", "line", "door", "in"): 8}
    assert totals(store, kind="line", bucket="day", by_device=True) == {
        (T0, a, "", "line", "door", "in"): 7, (T0 + 24 * hour, a, "", "line", "door", "in"): 8,
        (T0, b, "", "line", "door", "in"): 16}
    assert totals(store, since=T0 + 60, until=T0 + 3600, by_stream=True) == {
        (None, "", "cam0", "line", "door", "in"): 16 + 2, (None, "", "cam0", "zone", "queue", "enter"): 32}
    assert totals(store, device_ids=(b,), name="queue", bucket="minute") == {
        (T0 + 120, "", "", "zone", "queue", "enter"): 32}
    assert store.count_objects(CountQuery(device_ids=())) == []
    rows = store.count_objects(CountQuery(bucket="hour", kind="line"))
    assert rows[0] == CountBucketRow(T0, "", "", "line", "door", "person", "in", 19)
    assert [r.start for r in rows] == sorted(r.start for r in rows)
    with pytest.raises(InvalidArgument, match="bucket"):
        store.count_objects(CountQuery(bucket="week"))


# ---- snapshots ----


def test_snapshots_are_stored_once_per_jpeg_and_found_by_object(store):
    a, b = enroll(store, "hw-a"), enroll(store, "hw-b")
    jpeg = b"\xff\xd8same picture\xff\xd9"
    store.store_frames(a, [event(1, obj("o-1", T0)), snap(2, "o-1", jpeg), snap(3, "o-1", b"\xff\xd8frame", "frame")])
    store.store_frames(a, [snap(2, "o-1", jpeg)])  # a replay
    store.store_frames(b, [snap(1, "o-7", jpeg)])  # the same bytes from another device
    assert sql(store, "select count(*) from snapshots")[0][0] == 2
    assert sql(store, "select sha256 from object_snapshots where object_id = %s", ["o-7"])[0][0] == (
        hashlib.sha256(jpeg).hexdigest())
    got = store.get_snapshot("o-1")
    assert (got.jpeg, got.device_id, got.kind, got.stream_id, got.label) == (jpeg, a, "crop", "cam0", "person")
    assert store.get_snapshot("o-1", "frame").jpeg == b"\xff\xd8frame"
    assert store.get_snapshot("o-7", device_id=b).jpeg == jpeg


def test_get_snapshot_names_what_is_missing(store):
    a, b = enroll(store, "hw-a"), enroll(store, "hw-b")
    store.store_frames(a, [event(1, obj("o-1", T0)), snap(2, "o-1", b"\xff\xd8a")])
    store.store_frames(b, [event(1, obj("o-1", T0)), event(2, obj("o-2", T0))])
    with pytest.raises(InvalidArgument, match="2 devices"):
        store.get_snapshot("o-1")
    assert store.get_snapshot("o-1", device_id=a).jpeg == b"\xff\xd8a"
    with pytest.raises(NotFound, match="no 'crop' snapshot"):
        store.get_snapshot("o-2")
    with pytest.raises(NotFound, match="'o-9' is not stored"):
        store.get_snapshot("o-9")
    with pytest.raises(InvalidArgument, match="kind"):
        store.get_snapshot("o-1", "live", a)


# ---- --store-frames ----


@pytest.mark.parametrize("policy,kept", [("all", [1, 2, 3, 4, 5, 6]), ("none", []), ("sample:3", [1, 4])])
def test_frames_are_kept_as_the_policy_says_and_acked_either_way(store, policy, kept):
    device = enroll(store)
    store.frames_policy = FramePolicy.parse(policy)
    batch = [frame(s, index=s - 1 + 3) for s in range(1, 7)] + [counts(7, (0, "line", "door", "person", "in", 1))]
    assert store.store_frames(device, batch) == StoreResult(7, 7, 0)
    assert store.store_frames(device, batch) == StoreResult(7, 0, 7)  # a replay: nothing new, acked as before
    stored = sql(store, "select sequence from detections where device_id = %s order by sequence", [device])
    assert [s for (s,) in stored] == kept
    assert store.get_device(device).detections_stored == len(kept)
    assert totals(store) == {(None, "", "", "line", "door", "in"): 1}


@pytest.mark.parametrize("text", ["some", "sample:0", "sample:", "sample:x", "sample:-2", "ALL"])
def test_a_bad_frames_policy_names_the_value(text):
    with pytest.raises(ValueError, match=repr(text).replace("\\", "\\\\").replace("(", r"\(")):
        FramePolicy.parse(text)


# ---- retention ----


def test_retention_deletes_each_kind_and_pictures_nothing_refers_to(store):
    device = enroll(store)
    old, new = b"\xff\xd8old", b"\xff\xd8new"
    store.store_frames(device, [event(1, obj("o-1", T0 + 10)), event(2, obj("o-2", T0 + 5000)),
                                counts(3, (0, "line", "door", "person", "in", 1), (100, "line", "door", "person", "in",
                                                                                   2)),
                                snap(4, "o-1", old, t=T0 + 10), snap(5, "o-2", new, t=T0 + 5000)])
    cutoff = T0 + 1000
    assert store.delete_objects_before(cutoff, 10) == 1
    assert store.delete_counts_before(cutoff, 10) == 1
    # the picture's row goes; its JPEG stays until no picture refers to it for the grace period
    assert store.delete_snapshots_before(cutoff, 10) == 1
    sql(store, "update snapshots set created = %s", [time.time() - 7200])
    assert store.delete_snapshots_before(cutoff, 10) == 1
    assert [o.object_id for o in store.list_objects(ObjectQuery())] == ["o-2"]
    assert totals(store) == {(None, "", "", "line", "door", "in"): 2}
    assert [row[0] for row in sql(store, "select jpeg from snapshots")] == [new]
    assert store.get_snapshot("o-2").jpeg == new
    with pytest.raises(NotFound):
        store.get_snapshot("o-1")


def test_retention_deletes_in_chunks(store):
    device = enroll(store)
    store.store_frames(device, [event(i, obj(f"o-{i}", T0 + i)) for i in range(1, 8)])
    assert [store.delete_objects_before(T0 + 100, 3) for _ in range(4)] == [3, 3, 1, 0]


# ---- PostgreSQL: two replicas ----


def test_two_replicas_storing_the_same_records_at_once_add_each_count_once(pg_replicas):
    """Both replicas commit the same mixed groups (three devices, in opposite orders) at the same moment, round
    after round: every count is added once, every object and picture stored once."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    a, b = pg_replicas
    devices = [enroll(a, f"hw-{i}") for i in range(3)]
    start = threading.Barrier(2)

    def commit(store, group):
        start.wait(timeout=10)
        return store.store_frames_many(group)

    for first in range(1, 120, 4):
        def records(first=first):
            return [frame(first), event(first + 1, obj(f"o-{first}", T0 + first)),
                    counts(first + 2, (first // 60, "line", "door", "person", "in", 1)),
                    snap(first + 3, f"o-{first}", b"\xff\xd8" + bytes([first]))]

        groups = [[(d, records()) for d in devices] for _ in range(2)]
        with ThreadPoolExecutor(2) as pool:
            one, two = pool.map(commit, (a, b), (groups[0], groups[1][::-1]))
        for result, other in zip(one, two[::-1]):
            assert result.acked_sequence == other.acked_sequence == first + 3
            assert sorted([result.stored, other.stored]) == [0, 4]
    assert {r.device_id: r.count for r in a.count_objects(CountQuery(by_device=True))} == dict.fromkeys(devices, 30)
    assert len(b.list_objects(ObjectQuery(limit=1000))) == 90
    assert sql(a, "select count(*) from object_snapshots")[0][0] == 90
    assert sql(a, "select count(*) from snapshots")[0][0] == 30
