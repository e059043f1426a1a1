from __future__ import annotations

import pytest

from agent.outbox import Outbox, OutboxObject, OutboxRecord


def record(frame_index: int, n_objects: int = 1) -> OutboxRecord:
    objects = [OutboxObject(i + 1, 0, "person", 0.9, (1.0, 2.0, 30.0, 40.0)) for i in range(n_objects)]
    return OutboxRecord(stream_id="cam0", frame_index=frame_index, capture_time=1000.0 + frame_index,
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
