from __future__ import annotations

import json
import sqlite3

import pytest

from edgefleet.agent.outbox import RECORD_OVERHEAD_BYTES, Outbox, OutboxWriter
from edgefleet.common.records import FrameRecord, ObjectRecord


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
