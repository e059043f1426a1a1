"""fit_answer: a listing's answer stays under the budget, cut from the end the caller can page on from."""
from __future__ import annotations

from edgefleet.fleet import convert
from edgefleet.fleet.convert import fit_answer
from edgefleet.v1 import fleet_pb2


def entries(n: int, size: int) -> list[fleet_pb2.AuditEntry]:
    return [fleet_pb2.AuditEntry(id=i + 1, parameters="x" * size) for i in range(n)]


def test_a_small_listing_is_answered_whole():
    items = entries(5, 100)
    assert fit_answer(items, keep_newest=True) == (items, 0)


def test_the_newest_stay_or_the_first_of_a_page(monkeypatch):
    monkeypatch.setattr(convert, "ANSWER_BUDGET_BYTES", 1000)
    items = entries(10, 200)
    newest, omitted = fit_answer(items, keep_newest=True)
    assert [e.id for e in newest] == [7, 8, 9, 10] and omitted == 6
    first, omitted = fit_answer(items, keep_newest=False)
    assert [e.id for e in first] == [1, 2, 3, 4] and omitted == 6
    assert sum(e.ByteSize() + 8 for e in first) <= 1000


def test_one_item_bigger_than_the_budget_is_still_answered(monkeypatch):
    monkeypatch.setattr(convert, "ANSWER_BUDGET_BYTES", 100)
    assert fit_answer(entries(3, 500), keep_newest=True)[1] == 2
