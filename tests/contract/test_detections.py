"""The store's detections on both backends: idempotent storage and its answers (alone, in a group commit,
through the ingest writer), listings; and on PostgreSQL, two replicas storing the same frames at once."""
from __future__ import annotations

import asyncio
import json
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from edgefleet.common.records import FrameRecord, ObjectRecord, object_row, objects_from_json
from edgefleet.fleet.async_store import AsyncStore
from edgefleet.fleet.detection_store import StoreResult
from edgefleet.fleet.errors import InvalidArgument, NotFound
from edgefleet.fleet.ingest import IngestWriter


def enroll(store, hardware_id: str = "hw-1") -> str:
    key = store.create_enroll_key("t")
    device, _ = store.enroll(key, hardware_id, hardware_id, "0.1.0", {}, {})
    return device.device_id


def frames(*sequences: int, stream: str = "cam0", objects: int = 2, capture_base: float = 1000.0,
           label: str = "person") -> list[FrameRecord]:
    return [
        FrameRecord(stream, seq, seq - 1, capture_base + seq, [
            ObjectRecord(k + 1, k, label, 0.8 + k / 100, (1.0 + k, 2.0, 30.5, 40.25)) for k in range(objects)
        ])
        for seq in sequences
    ]


def sql(store, statement: str, params: list | tuple = ()) -> list[tuple]:
    """Plain SQL on the store's database, either backend (placeholders %s): for what no store method
    writes or reads (a receive time in the past, the stored text)."""
    if hasattr(store, "pool"):
        with store.pool.connection() as conn:
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else []
    return store.db.execute(statement.replace("%s", "?"), params).fetchall()


def stored_sequences(store, device_id: str) -> list[int]:
    return [row[0] for row in sql(store, "select sequence from detections where device_id = %s order by sequence",
                                  [device_id])]


def counters(store, device_id: str) -> tuple[int, int]:
    device = store.get_device(device_id)
    return device.acked_sequence, device.detections_stored


# ---- storing ----


def test_store_frames_is_idempotent_and_acks_the_highest_sequence(store):
    device = enroll(store)
    assert store.store_frames(device, frames(1, 2, 3)) == StoreResult(3, 3, 0)
    assert store.store_frames(device, frames(2, 3, 4)) == StoreResult(4, 1, 2)
    stored, total = store.list_detections(device, limit=100)
    assert [f.sequence for f in stored] == [1, 2, 3, 4] and total == 4
    assert stored[0].objects[0].label == "person" and stored[0].device_id == device
    assert counters(store, device) == (4, 4)


def test_a_replay_with_another_capture_time_is_still_a_duplicate(store):
    device = enroll(store)
    store.store_frames(device, frames(1, 2))
    assert store.store_frames(device, frames(1, 2, 3, capture_base=5000.0)) == StoreResult(3, 1, 2)
    assert stored_sequences(store, device) == [1, 2, 3]


def test_a_device_back_under_its_id_finds_the_frames_it_left_stored(store):
    """Removed without --purge-data, its frames stay; a device of the same id (MQTT-only devices keep
    theirs) starts from acked sequence 0, and its resent frames are duplicates all the same."""
    device = store.upsert_mqtt_device("garage-cam").device_id
    store.store_frames(device, frames(1, 2, 3))
    store.remove_device(device, purge_data=False)
    store.upsert_mqtt_device("garage-cam")
    assert store.store_frames(device, frames(2, 3, 4)) == StoreResult(4, 1, 2)
    assert stored_sequences(store, device) == [1, 2, 3, 4]
    assert counters(store, device) == (4, 1)


def test_store_frames_refuses_unknown_devices_and_bad_sequences(store):
    device = enroll(store)
    with pytest.raises(NotFound, match="'nope' is not enrolled"):
        store.store_frames("nope", frames(1))
    with pytest.raises(NotFound, match="'nope' is not enrolled"):
        store.store_frames("nope", frames(0))  # not enrolled comes first
    with pytest.raises(InvalidArgument, match=r"frames\[\].sequence must be in 1\.\.9223372036854775807, got 0"):
        store.store_frames(device, frames(0))
    with pytest.raises(InvalidArgument, match="frame_index"):
        store.store_frames(device, [FrameRecord("cam0", 1, 2**63, 1000.0, [])])
    assert stored_sequences(store, device) == [] and counters(store, device) == (0, 0)


def test_a_group_answers_each_batch_and_refuses_only_the_bad_ones(store):
    a, b = enroll(store, "hw-a"), enroll(store, "hw-b")
    results = store.store_frames_many([
        (a, frames(1, 2)), ("no-such-device", frames(1)), (b, frames(0, 1)), (b, frames(2**63)), (b, frames(3)),
    ])
    assert results[0] == StoreResult(2, 2, 0)
    assert isinstance(results[1], NotFound) and "no-such-device" in str(results[1])
    assert isinstance(results[2], InvalidArgument) and "sequence" in str(results[2])
    assert isinstance(results[3], InvalidArgument) and "sequence" in str(results[3])
    assert results[4] == StoreResult(3, 1, 0)
    assert stored_sequences(store, a) == [1, 2] and stored_sequences(store, b) == [3]
    assert counters(store, b) == (3, 1)


@pytest.mark.parametrize("score, xyxy", [
    (0.8999999761581421, (10.004999, 20.125, 639.999, 0.0)),  # float32 values as the wire gives them
    (1e-7, (-0.001, -5.555, 1e6, 3.14159)),
    (float("nan"), (1.0, 2.0, 3.0, 4.0)),                       # non-finite: the json.dumps path
    (0.5, (float("inf"), 2.0, 3.0, 4.0)),
])
def test_objects_are_stored_as_the_same_values_as_json_dumps_writes(store, score, xyxy):
    device = enroll(store)
    obj = ObjectRecord(7, 2, 'car "blue"', score, xyxy, predicted=True)
    store.store_frames(device, [FrameRecord("cam0", 1, 0, 1000.0, [obj])])
    ((text,),) = sql(store, "select objects from detections")
    stored, expected = json.loads(text), json.loads(json.dumps([object_row(obj)]))

    def same(x, y):
        return math.isnan(x) and math.isnan(y) if isinstance(x, float) and math.isnan(x) else x == y

    def flat(rows: list) -> list:
        return [v for row in rows for item in row for v in (item if isinstance(item, list) else [item])]

    assert all(same(x, y) for x, y in zip(flat(stored), flat(expected), strict=True))
    (frame,), _ = store.list_detections(device)
    assert frame.objects[0].label == 'car "blue"' and frame.objects[0].predicted
    assert repr(frame.objects) == repr(objects_from_json(text))


def test_what_the_outbox_keeps_is_what_the_store_lists(store, tmp_path):
    """One record type on both sides: the agent's outbox, the wire, the store, read back the same."""
    from edgefleet.agent.outbox import Outbox
    from edgefleet.common.convert import frame_from_pb, frame_to_pb

    record = FrameRecord("cam0", 7, 41, 1700000000.25, [
        ObjectRecord(3, 2, "car", 0.87654, (10.25, 20.5, 110.75, 220.0)),
        ObjectRecord(4, 0, 'person "x"', 0.5, (0.0, 1.0, 2.0, 3.0), predicted=True),
    ])
    outbox = Outbox(tmp_path / "outbox.db")
    try:
        outbox.append(record)
        (pending,) = outbox.pending()
        assert pending == record  # rounded in place as stored
        device = enroll(store)
        store.store_frames(device, [frame_from_pb(frame_to_pb(pending))])
        (stored,), _ = store.list_detections(device)
        assert stored.objects == pending.objects
        ((text,),) = sql(store, "select objects from detections")
        assert json.loads(text) == [object_row(o) for o in record.objects]
        assert objects_from_json(text) == record.objects
    finally:
        outbox.close()


# ---- through the ingest writer (one group commit) ----


def run_writer(store, batches: list[tuple[str, list[FrameRecord]]]) -> tuple[list, IngestWriter]:
    """Every batch queued before the writer wakes: they share one group."""
    async def main():
        db = AsyncStore(store)
        db.ingest.start()
        try:
            return await asyncio.gather(*(db.ingest.submit(d, f) for d, f in batches),
                                        return_exceptions=True), db.ingest
        finally:
            await db.ingest.stop()
            db._pool.shutdown(wait=True)

    return asyncio.run(main())


def test_many_devices_share_one_commit_and_each_gets_its_own_ack(store):
    a, b, c = (enroll(store, hw) for hw in ("hw-a", "hw-b", "hw-c"))
    results, writer = run_writer(store, [(a, frames(1, 2, 3)), (b, frames(1, 2)), (c, frames(5))])
    assert results == [StoreResult(3, 3, 0), StoreResult(2, 2, 0), StoreResult(5, 1, 0)]
    assert (writer.stats.groups, writer.stats.batches, writer.stats.frames) == (1, 3, 6)
    assert stored_sequences(store, a) == [1, 2, 3]
    assert counters(store, c) == (5, 1)


@pytest.mark.parametrize("batches, expected", [
    # a resend overlapping the batch before it, in the same group
    ([(1, 2, 3), (2, 3, 4)], [(3, 3, 0), (4, 1, 2)]),
    # a full replay, then new records
    ([(1, 2), (1, 2), (3,)], [(2, 2, 0), (2, 0, 2), (3, 1, 0)]),
    # an old replay after a newer batch: the ack never goes back
    ([(5, 6), (1, 2)], [(6, 2, 0), (6, 2, 0)]),
    # empty batches ack what is committed and store nothing
    ([(), (1,), ()], [(0, 0, 0), (1, 1, 0), (1, 0, 0)]),
    # a gap (logged) still acks the highest
    ([(1, 2), (4, 5)], [(2, 2, 0), (5, 2, 0)]),
    # a sequence twice in one batch is stored once
    ([(1, 1, 2)], [(2, 2, 1)]),
    # batches over one INSERT's 100 rows
    ([tuple(range(1, 251)), tuple(range(240, 262))], [(250, 250, 0), (261, 11, 11)]),
])
def test_one_group_answers_each_batch_as_one_transaction_per_batch_did(store, batches, expected):
    """(acked sequence, stored, duplicates) per batch, as `store_frames` answered batch by batch."""
    device = enroll(store)
    results, writer = run_writer(store, [(device, frames(*seqs)) for seqs in batches])
    assert [(r.acked_sequence, r.stored, r.duplicates) for r in results] == expected
    assert writer.stats.groups == 1
    assert stored_sequences(store, device) == sorted({s for seqs in batches for s in seqs})
    assert counters(store, device) == (expected[-1][0], sum(e[1] for e in expected))


def test_load_forms_groups_and_loses_nothing(store):
    """Many streams publishing in turn, as PublishDetections does: groups grow, every record lands once."""
    devices = [enroll(store, f"hw-{i}") for i in range(40)]

    async def device(writer: IngestWriter, device_id: str) -> list[int]:
        acks = []
        for first in range(1, 41, 4):
            result = await writer.submit(device_id, frames(*range(first, first + 4)))
            acks.append(result.acked_sequence)
        return acks

    async def main():
        db = AsyncStore(store)
        db.ingest.start()
        try:
            return await asyncio.gather(*(device(db.ingest, d) for d in devices)), db.ingest.stats
        finally:
            await db.ingest.stop()
            db._pool.shutdown(wait=True)

    acks, stats = asyncio.run(main())
    assert all(a == list(range(4, 41, 4)) for a in acks)
    assert stats.batches == 400 and stats.groups < 200
    assert sql(store, "select count(*), count(distinct device_id) from detections") == [(1600, 40)]
    assert {store.get_device(d).detections_stored for d in devices} == {40}


# ---- listings ----


def test_list_detections_newest_window_and_after_sequence(store):
    device = enroll(store)
    store.store_frames(device, frames(*range(1, 11)))
    newest, total = store.list_detections(device, limit=3)
    assert [f.sequence for f in newest] == [8, 9, 10] and total == 10
    after, _ = store.list_detections(device, after_sequence=4, limit=2)
    assert [f.sequence for f in after] == [5, 6]
    beyond, _ = store.list_detections(device, after_sequence=2**64 - 1)
    assert beyond == []
    everything, _ = store.list_detections(device, limit=-1)
    assert len(everything) == 10


def test_list_detections_filters_by_stream_time_and_label(store):
    device = enroll(store)
    store.store_frames(device, frames(1, 2, 3) + frames(4, 5, stream="cam1", label="car"))
    by_stream, total = store.list_detections(device, "cam1")
    assert [f.sequence for f in by_stream] == [4, 5] and total == 5
    by_time, _ = store.list_detections(device, since=1002.0, until=1004.0)
    assert [f.sequence for f in by_time] == [2, 3]
    by_label, _ = store.list_detections(device, labels=["car", "bus"])
    assert [f.sequence for f in by_label] == [4, 5] and {o.label for f in by_label for o in f.objects} == {"car"}


def test_an_unknown_device_has_no_detections_to_list(store):
    with pytest.raises(NotFound, match="'nope' is not enrolled"):
        store.list_detections("nope")


def test_a_removed_device_lists_the_records_it_left(store):
    device = enroll(store)
    store.store_frames(device, frames(1, 2, 3))
    store.remove_device(device, purge_data=False)
    listed, total = store.list_detections(device)
    assert [f.sequence for f in listed] == [1, 2, 3] and total == 3


def test_several_devices_newest_by_capture_time_then_device_id_bytewise(store):
    """The newest `limit` of several devices, oldest first; at one capture time by device id as bytes ("B"
    before "a", whatever the database's collation), then sequence."""
    a = store.upsert_mqtt_device("B-cam").device_id  # any id: an MQTT-only device's is its own
    b = store.upsert_mqtt_device("a-cam").device_id
    store.store_frames(a, frames(1, 2, 3))  # captured at 1001, 1002, 1003
    store.store_frames(b, frames(2, 3, 4, label="car"))  # at 1002, 1003, 1004
    listed, total = store.list_detections_of([b, a], limit=4)
    assert [(f.device_id, f.sequence) for f in listed] == [(a, 2), (a, 3), (b, 3), (b, 4)]
    assert total == 6
    cars, _ = store.list_detections_of([a, b], labels=["car"], since=1003.0)
    assert [(f.device_id, f.sequence) for f in cars] == [(b, 3), (b, 4)]
    assert store.list_detections_of([]) == ([], 0)


# ---- PostgreSQL: replicas at once ----



def test_two_replicas_storing_the_same_batches_at_once_store_them_once(pg_replicas):
    """Both replicas commit the same groups (three devices, overlapping batches, in opposite orders) at the
    same moment, round after round: each frame is stored once, and between them the two answers of a batch
    count it once as stored and once as a duplicate."""
    a, b = pg_replicas
    devices = [enroll(a, f"hw-{i}") for i in range(3)]
    start = threading.Barrier(2)

    def commit(store, group):
        start.wait(timeout=10)
        return store.store_frames_many(group)

    for first in range(1, 200, 20):
        group = [(d, frames(*range(first, first + 20), objects=1)) for d in devices]
        with ThreadPoolExecutor(2) as pool:
            one, two = pool.map(commit, (a, b), (group, group[::-1]))
        for result, other in zip(one, two[::-1]):
            assert result.acked_sequence == other.acked_sequence == first + 19
            assert sorted([result.stored, other.stored]) == [0, 20]
            assert result.stored + result.duplicates == other.stored + other.duplicates == 20
    for device in devices:
        assert stored_sequences(a, device) == list(range(1, 201))
        assert counters(b, device) == (200, 200)


def test_a_replica_waits_for_another_storing_the_same_device_then_finds_its_frames(pg_replicas, pg_url):
    """A replica's group commit holds the device while two more arrive with the same frames: they wait, then
    both answer the frames as duplicates (their check ran after the first committed)."""
    import psycopg

    from .test_devices import wait_for_lock_waiters

    a, b = pg_replicas
    device = enroll(a)
    with ThreadPoolExecutor(2) as pool, psycopg.connect(pg_url, autocommit=True) as holder:
        holder.execute("begin")
        holder.execute("select 1 from devices where device_id = %s for update", [device])
        futures = [pool.submit(store.store_frames, device, frames(1, 2, 3)) for store in (a, b)]
        wait_for_lock_waiters(pg_url, 2)
        assert stored_sequences(a, device) == []
        holder.execute("commit")
        results = sorted((future.result(timeout=30) for future in futures), key=lambda r: r.stored)
    assert results == [StoreResult(3, 0, 3), StoreResult(3, 3, 0)]
    assert counters(a, device) == (3, 3)


def test_a_failing_shared_transaction_is_retried_batch_by_batch_on_postgres(pg_url):
    """Something validation cannot see (here a trigger) fails the group; only its batch fails."""
    from edgefleet.fleet.pg.store import PgStore

    store = PgStore(pg_url)
    try:
        a, b = enroll(store, "hw-a"), enroll(store, "hw-b")
        sql(store, "create function refuse() returns trigger language plpgsql as $$ begin"
                   " raise check_violation using message = 'refused by trigger'; end $$")
        sql(store, "create trigger refuse before insert on detections for each row"
                   " when (new.stream_id = 'bad') execute function refuse()")
        results = store.store_frames_many([(a, frames(1, 2)), (b, frames(1, stream="bad")), (b, frames(2))])
        assert results[0] == StoreResult(2, 2, 0)
        assert "refused by trigger" in str(results[1])
        assert results[2] == StoreResult(2, 1, 0)
        assert stored_sequences(store, a) == [1, 2] and stored_sequences(store, b) == [2]
        assert counters(store, b) == (2, 1)
    finally:
        store.close()


def test_a_stream_id_postgresql_cannot_hold_is_an_invalid_argument(pg_replicas):
    store, _ = pg_replicas
    device = enroll(store)
    results = store.store_frames_many([(device, frames(1, stream="cam\x000")), (device, frames(2))])
    assert isinstance(results[0], InvalidArgument) and "stream_id must not contain NUL" in str(results[0])
    assert results[1] == StoreResult(2, 1, 0)
