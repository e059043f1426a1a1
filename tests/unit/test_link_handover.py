"""The link sends records the pipeline has just committed from memory, and falls back to the
outbox for anything that does not follow on what it sent last."""
from __future__ import annotations

from edgefleet.adaptive.plan import DevicePlan
from edgefleet.adaptive.probe import HardwareProfile
from edgefleet.agent.health import HealthSample
from edgefleet.agent.link import FRESH_MAX, Link
from edgefleet.agent.messages import Hello
from edgefleet.agent.outbox import OutboxRecord


def link(tmp_path, batch_size: int = 4) -> Link:
    return Link(controller="127.0.0.1:1", state_dir=tmp_path, outbox_path=tmp_path / "outbox.db", enroll_key=None,
                name="t", hello=lambda: Hello(HardwareProfile(), DevicePlan(), ["cam0"], 0.0), health=HealthSample,
                batch_size=batch_size)


def records(first: int, last: int) -> list[OutboxRecord]:
    return [OutboxRecord("cam0", seq, seq, 1000.0) for seq in range(first, last + 1)]


def sequences(batch: list[OutboxRecord]) -> list[int]:
    return [r.sequence for r in batch]


def test_takes_what_follows_on_the_last_sent_in_batches(tmp_path):
    lk = link(tmp_path)
    lk.committed(records(1, 6))
    assert sequences(lk._take_fresh(0)) == [1, 2, 3, 4]
    assert sequences(lk._take_fresh(4)) == [5, 6]
    assert lk._take_fresh(6) == []


def test_skips_what_was_sent_and_stops_at_a_gap(tmp_path):
    lk = link(tmp_path)
    lk.committed(records(1, 3) + records(5, 6))
    assert sequences(lk._take_fresh(1)) == [2, 3]  # 1 went out already (read from the outbox)
    assert lk._take_fresh(3) == []  # 4 is missing: the outbox has it
    assert sequences(lk._take_fresh(4)) == [5, 6]


def test_a_backlog_beyond_memory_comes_from_the_outbox(tmp_path):
    lk = link(tmp_path)
    lk.committed(records(1, FRESH_MAX + 10))
    assert lk._take_fresh(0) == []  # the oldest were evicted: 1 is not in memory
    assert sequences(lk._take_fresh(10)) == [11, 12, 13, 14]


def test_an_empty_handover_forgets_the_records_before_it(tmp_path):
    lk = link(tmp_path)
    lk.committed(records(1, 3))
    lk.committed([])  # the outbox dropped records: what is in memory may be gone from it
    assert lk._take_fresh(0) == []
