from __future__ import annotations

import dataclasses
import json
import sqlite3

import pytest

from edgefleet.agent import sending
from edgefleet.agent.outbox import RECORD_OVERHEAD_BYTES, Outbox, OutboxWriter, payload_of
from edgefleet.agent.sending import Fresh, within_bytes
from edgefleet.common.convert import batch_to_pb
from edgefleet.common.records import (
    CountRecord,
    CountRow,
    FrameRecord,
    ObjectEventRecord,
    ObjectRecord,
    Record,
    SnapshotRecord,
    TrackedObject,
)


def record(frame_index: int, n_objects: int = 1) -> FrameRecord:
    objects = [ObjectRecord(i + 1, 0, "person", 0.9, (1.0, 2.0, 30.0, 40.0)) for i in range(n_objects)]
    return FrameRecord(stream_id="cam0", sequence=0, frame_index=frame_index, capture_time=1000.0 + frame_index,
                       objects=objects)


@pytest.fixture
def outbox(tmp_path):
    box = Outbox(tmp_path / "outbox.db")
    yield box
    box.close()


def test_sequences_start_at_one_and_are_contiguous(outbox):
    assert [outbox.append(record(i)) for i in range(5)] == [1, 2, 3, 4, 5]


def test_pending_returns_records_in_order_with_their_objects(outbox):
    for i in range(3):
        outbox.append(record(i, n_objects=i))
    pending = outbox.pending(after_sequence=1, limit=10)
    assert [r.sequence for r in pending] == [2, 3]
    assert [len(r.objects) for r in pending] == [1, 2]
    assert pending[1].objects[1].label == "person"
    assert pending[1].objects[1].xyxy == (1.0, 2.0, 30.0, 40.0)


def test_ack_deletes_only_what_was_acknowledged(outbox):
    for i in range(5):
        outbox.append(record(i))
    assert outbox.ack(3) == 3
    assert [r.sequence for r in outbox.pending()] == [4, 5]
    assert outbox.depth() == 2


def test_sequences_are_never_reused_after_acks_or_a_restart(tmp_path):
    box = Outbox(tmp_path / "o.db")
    for i in range(3):
        box.append(record(i))
    box.ack(3)
    box.close()
    box = Outbox(tmp_path / "o.db")
    assert box.depth() == 0
    assert box.append(record(3)) == 4
    assert box.last_sequence() == 4
    box.close()


def test_records_survive_a_reopen(tmp_path):
    box = Outbox(tmp_path / "o.db")
    box.append(record(7, n_objects=2))
    box.close()
    box = Outbox(tmp_path / "o.db")
    (again,) = box.pending()
    assert (again.sequence, again.frame_index, len(again.objects)) == (1, 7, 2)
    box.close()


# ---- bounds: the oldest unacknowledged records go first, counted ----

def record_bytes(r: FrameRecord) -> int:
    """What the outbox counts for one record (payload + fixed overhead), computed independently."""
    objects = [[o.track_id, o.class_id, o.label, round(float(o.score), 5), [round(float(v), 2) for v in o.xyxy],
                int(o.predicted)] for o in r.objects]
    return len(json.dumps(objects).encode()) + len(r.stream_id.encode()) + RECORD_OVERHEAD_BYTES


def test_size_is_counted_on_append_and_ack_and_survives_a_reopen(tmp_path):
    box = Outbox(tmp_path / "o.db")
    records = [record(i, n_objects=i % 3) for i in range(6)]
    box.append_many(records)
    assert box.size_bytes() == sum(record_bytes(r) for r in records)
    box.ack(2)
    assert box.size_bytes() == sum(record_bytes(r) for r in records[2:])
    box.close()
    box = Outbox(tmp_path / "o.db")
    assert box.size_bytes() == sum(record_bytes(r) for r in records[2:])
    assert box.dropped_total() == 0
    box.close()


def test_an_outbox_from_before_the_bounds_is_counted_once_on_open(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("create table outbox (sequence integer primary key autoincrement, stream_id text not null,"
                 " frame_index integer not null, capture_time real not null, objects text not null)")
    conn.executemany("insert into outbox (stream_id, frame_index, capture_time, objects) values (?, ?, ?, ?)",
                     [("cam0", i, 1000.0 + i, "[]") for i in range(4)])
    conn.commit()
    conn.close()
    box = Outbox(path, max_bytes=3 * (2 + 4 + RECORD_OVERHEAD_BYTES))
    assert box.size_bytes() == 4 * (2 + 4 + RECORD_OVERHEAD_BYTES)
    assert box.append(record(4, n_objects=0)) == 5
    assert [r.sequence for r in box.pending()] == [3, 4, 5]
    assert box.dropped == 2
    box.close()


@pytest.mark.parametrize(("limit_records", "appended", "kept"), [
    (10, 10, list(range(1, 11))),    # exactly full: nothing goes
    (10, 11, list(range(2, 12))),    # one over: the oldest goes
    (10, 25, list(range(16, 26))),   # far over: always the newest ten stay
    (1, 3, [3]),
])
def test_max_bytes_drops_the_oldest_records_first_and_counts_them(tmp_path, limit_records, appended, kept):
    one = record_bytes(record(0))
    box = Outbox(tmp_path / "o.db", max_bytes=limit_records * one)
    for i in range(appended):
        box.append(record(i))
    assert [r.sequence for r in box.pending(limit=100)] == kept
    assert box.size_bytes() == len(kept) * one <= box.max_bytes
    assert box.dropped == box.dropped_total() == appended - len(kept)
    box.close()


def test_a_batch_over_the_bound_keeps_its_newest_records(tmp_path):
    one = record_bytes(record(0))
    box = Outbox(tmp_path / "o.db", max_bytes=4 * one + one // 2)
    assert box.append_many([record(i) for i in range(9)]) == list(range(1, 10))
    assert [r.frame_index for r in box.pending()] == [5, 6, 7, 8]
    assert box.dropped == 5
    box.close()


def test_acked_records_free_room_and_sequences_are_never_reused_after_drops(tmp_path):
    one = record_bytes(record(0))
    box = Outbox(tmp_path / "o.db", max_bytes=5 * one)
    for i in range(8):
        box.append(record(i))
    assert box.dropped == 3
    box.ack(6)  # the controller took 4..6
    for i in range(8, 11):
        box.append(record(i))
    assert [r.sequence for r in box.pending()] == [7, 8, 9, 10, 11]
    assert box.dropped == 3
    box.close()
    box = Outbox(tmp_path / "o.db", max_bytes=5 * one)
    assert box.append(record(11)) == 12
    assert (box.dropped, box.dropped_total()) == (1, 4), "this object's drops, and the file's since it was made"
    box.close()


def test_max_age_drops_records_captured_too_long_ago_oldest_first(tmp_path):
    now = [2000.0]
    box = Outbox(tmp_path / "o.db", max_age_s=100.0, clock=lambda: now[0])
    box.append_many([record(i) for i in range(0, 600, 50)])  # captured at 1000, 1050, ... 1550
    assert (box.dropped, box.dropped_total(), box.depth()) == (12, 12, 0), "all captured over 100 s before 2000"
    now[0] = 1700.0
    box.append_many([record(i) for i in range(500, 800, 100)])  # 1500, 1600, 1700
    assert [r.capture_time for r in box.pending()] == [1600.0, 1700.0]
    assert box.dropped == 13
    box.close()


def test_both_bounds_together_and_no_bounds(tmp_path):
    one = record_bytes(record(0))
    box = Outbox(tmp_path / "o.db", max_bytes=3 * one, max_age_s=10.0, clock=lambda: 1015.0)
    box.append_many([record(i) for i in range(10)])  # captured 1000..1009: 0..4 expired; then 3 newest of 5..9
    assert [r.frame_index for r in box.pending()] == [7, 8, 9]
    assert box.dropped == 7
    box.close()
    unbounded = Outbox(tmp_path / "u.db")
    unbounded.append_many([record(i) for i in range(50)])
    assert (unbounded.depth(), unbounded.dropped) == (50, 0)
    unbounded.close()


def test_bounds_must_not_be_negative(tmp_path):
    with pytest.raises(ValueError, match="max_bytes=-1"):
        Outbox(tmp_path / "o.db", max_bytes=-1)


def test_the_link_side_sees_the_pipeline_drops(tmp_path):
    """Two objects on one file, as in the agent: the link reads past records the pipeline dropped."""
    one = record_bytes(record(0))
    pipeline, link = Outbox(tmp_path / "o.db", max_bytes=3 * one), Outbox(tmp_path / "o.db")
    pipeline.append_many([record(i) for i in range(3)])
    assert [r.sequence for r in link.pending(after_sequence=1)] == [2, 3]
    pipeline.append_many([record(i) for i in range(3, 6)])
    assert [r.sequence for r in link.pending(after_sequence=3)] == [4, 5, 6]
    assert link.ack(4) == 1 and pipeline.size_bytes() == link.size_bytes() == 2 * one
    pipeline.close()
    link.close()


def test_append_rounds_what_it_stores_on_the_records_too(outbox):
    rec = FrameRecord("cam0", 0, 0, 1000.0, [ObjectRecord(1, 0, "person", 0.123456789, (1.004, 2.0051, 3.3333, 4.0))])
    outbox.append(rec)
    assert rec.objects[0].score == 0.12346 and rec.objects[0].xyxy == (1.0, 2.01, 3.33, 4.0)
    assert outbox.pending()[0] == rec  # a record sent from memory equals the stored copy


def test_writer_commits_groups_in_order_and_reports_each_commit(outbox):
    commits = []
    writer = OutboxWriter(outbox, lambda records, dropped: commits.append(([r.sequence for r in records], dropped)))
    for start in range(0, 30, 3):
        writer.put([record(i) for i in range(start, start + 3)])
    writer.flush()
    assert [seq for seqs, _ in commits for seq in seqs] == list(range(1, 31))
    assert all(dropped == 0 for _, dropped in commits)
    assert outbox.depth() == 30
    writer.put([record(30)])
    writer.close()  # commits what is left
    assert outbox.depth() == 31


def test_writer_reports_what_the_bounds_dropped(tmp_path):
    box = Outbox(tmp_path / "o.db", max_bytes=3 * (2 + 4 + RECORD_OVERHEAD_BYTES))
    dropped = []
    writer = OutboxWriter(box, lambda records, n: dropped.append(n))
    try:
        for i in range(5):
            writer.put([FrameRecord("c", 0, i, 1000.0 + i)])
            writer.flush()
    finally:
        writer.close()
        box.close()
    assert dropped == [0, 0, 0, 1, 1]


def test_writer_raises_its_error_on_the_next_call(outbox):
    def fail(records, dropped):
        raise OSError(28, "No space left on device")

    writer = OutboxWriter(outbox, fail)
    writer.put([record(0)])
    with pytest.raises(OSError, match="No space left"):
        writer.flush()
    with pytest.raises(OSError, match="No space left"):
        writer.put([record(1)])
    writer.close()


# ---- every record kind: object events, counts and snapshots beside frames ----

def tracked(object_id: str = "1000-abc123", **changes) -> TrackedObject:
    obj = TrackedObject(object_id, "cam0", 7, "person", 0, 1000.0, 1002.5, 0.875, (10.0, 20.0, 50.0, 120.0),
                        path=[(30.0, 120.0, 1000.0), (32.0, 121.0, 1002.5)], zones=["shop"],
                        crossings=[("door", "in", 1001.0)], frames=12)
    return dataclasses.replace(obj, **changes)


def mixed() -> list[Record]:
    return [
        record(0, n_objects=2),
        ObjectEventRecord("new", tracked()),
        CountRecord([CountRow("cam0", 960, "line", "door", "person", "in", 3),
                     CountRow("cam0", 960, "zone", "shop", "person", "enter", 1)]),
        SnapshotRecord("cam0", "1000-abc123", "crop", "person", 1002.5, b"\xff\xd8jpeg" * 100, 0.875),
        record(1),
        ObjectEventRecord("end", tracked(ended=True, has_snapshot=True)),
    ]


def without_sequence(rec: Record) -> Record:
    return dataclasses.replace(rec, sequence=0)


def test_every_kind_comes_back_as_it_went_in_in_sequence_order(tmp_path):
    box = Outbox(tmp_path / "o.db")
    records = mixed()
    assert box.append_many(records) == [1, 2, 3, 4, 5, 6]
    box.close()
    box = Outbox(tmp_path / "o.db")  # a restart: the link resends from the outbox
    again = box.pending(limit=10)
    assert [type(r) for r in again] == [type(r) for r in records]
    assert [r.sequence for r in again] == [1, 2, 3, 4, 5, 6]
    assert [without_sequence(r) for r in again] == [without_sequence(r) for r in records]
    assert box.pending(after_sequence=3, limit=1)[0].jpeg == records[3].jpeg
    box.ack(4)
    assert [type(r).__name__ for r in box.pending()] == ["FrameRecord", "ObjectEventRecord"]
    box.close()


def test_payload_bytes_count_in_the_bound_and_a_snapshot_pushes_the_oldest_out(tmp_path):
    snapshot = SnapshotRecord("cam0", "1000-abc123", "frame", "person", 1003.0, bytes(50_000))
    box = Outbox(tmp_path / "o.db", max_bytes=60_000)
    box.append_many([record(i) for i in range(100)])  # 100 frames of ~150 bytes: all fit
    assert box.dropped == 0 and box.depth() == 100
    before = box.size_bytes()
    box.append(snapshot)
    # the snapshot's 50,000 bytes (and its row) count: the oldest frames go to stay within 60,000
    assert box.size_bytes() <= 60_000
    assert box.size_bytes() >= 50_000
    assert box.dropped == 100 + 1 - box.depth() > 0
    assert box.pending(after_sequence=100, limit=1)[0].jpeg == snapshot.jpeg
    assert before > box.size_bytes() - 50_000
    box.ack(101)
    assert box.size_bytes() == 0 and box.depth() == 0
    box.close()


def test_a_record_larger_than_the_whole_bound_is_dropped_alone(tmp_path):
    """A snapshot that could never fit does not push every frame before it out."""
    box = Outbox(tmp_path / "o.db", max_bytes=5_000)
    box.append_many([record(i) for i in range(10)])
    snapshot = SnapshotRecord("cam0", "1000-abc123", "frame", "person", 1003.0, bytes(50_000))
    box.append_many([snapshot, record(10)])
    assert [r.frame_index for r in box.pending()] == list(range(11)), "the frames stay, the snapshot went"
    assert (box.dropped, box.dropped_total()) == (1, 1)
    box.close()


def test_an_outbox_from_before_the_other_kinds_gets_them_in_place(tmp_path):
    path = tmp_path / "old.db"
    box = Outbox(path)
    box.append_many([record(0), record(1, n_objects=3)])
    size = box.size_bytes()
    box.close()
    conn = sqlite3.connect(path)  # as the outbox of the previous version made it
    conn.execute("create table old as select sequence, stream_id, frame_index, capture_time, objects from outbox")
    conn.execute("drop table outbox")
    conn.execute("create table outbox (sequence integer primary key autoincrement, stream_id text not null,"
                 " frame_index integer not null, capture_time real not null, objects text not null)")
    conn.execute("insert into outbox select * from old")
    conn.execute("drop table old")
    conn.execute("create trigger outbox_bytes_insert after insert on outbox begin update outbox_meta set value ="
                 " value + length(cast(new.objects as blob)) where key = 'bytes'; end")
    conn.commit()
    conn.close()
    box = Outbox(path)
    assert [(type(r).__name__, r.sequence, len(r.objects)) for r in box.pending()] == [
        ("FrameRecord", 1, 1), ("FrameRecord", 2, 3)]
    snapshot = SnapshotRecord("cam0", "x", "crop", "person", 1003.0, bytes(1000))
    assert box.append(snapshot) == 3
    payload = len(payload_of(snapshot))  # the serialized message: the JPEG and its fields
    assert payload > 1000
    assert box.size_bytes() == size + payload + len(b"cam0") + RECORD_OVERHEAD_BYTES  # the new trigger counts it
    box.close()
    assert {row[1] for row in sqlite3.connect(path).execute("pragma table_info(outbox)")} >= {"kind", "payload"}


def test_the_writer_hands_every_kind_to_its_listener(outbox):
    seen: list[list] = []
    writer = OutboxWriter(outbox, lambda records, dropped: seen.append([type(r).__name__ for r in records]))
    writer.put(mixed()[:4])
    writer.flush()
    writer.close()
    assert seen == [["FrameRecord", "ObjectEventRecord", "CountRecord", "SnapshotRecord"]]


# ---- what the link sends: batches under a byte cap ----

def test_a_batch_stays_under_its_byte_cap_and_a_big_record_goes_alone():
    frames = [record(i, n_objects=2) for i in range(10)]
    big = SnapshotRecord("cam0", "x", "frame", "person", 1.0, bytes(90_000))
    assert within_bytes(frames, max_bytes=10_000) == 10
    assert within_bytes([*frames[:3], big, *frames[3:]], max_bytes=10_000) == 3
    assert within_bytes([big, *frames], max_bytes=10_000) == 1
    assert within_bytes([], max_bytes=10_000) == 0
    for rec in mixed():  # the estimate is never below what the message takes on the wire
        rec.sequence = 1 << 40
        assert sending.record_bytes(rec) >= batch_to_pb([rec]).ByteSize()


def test_fresh_records_are_taken_within_the_byte_cap_and_the_rest_waits():
    fresh = Fresh()
    snaps = [SnapshotRecord("cam0", str(i), "crop", "person", 1.0, bytes(40_000), sequence=i + 1) for i in range(5)]
    fresh.committed(snaps)
    taken = fresh.take(0, limit=64, max_bytes=100_000)
    assert [r.sequence for r in taken] == [1, 2]
    assert [r.sequence for r in fresh.take(2, limit=64, max_bytes=100_000)] == [3, 4]
    assert [r.sequence for r in fresh.take(4, limit=64, max_bytes=100_000)] == [5]
    assert within_bytes(snaps) == 5  # the default cap (1 MiB) takes them all
