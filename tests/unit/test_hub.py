from __future__ import annotations

from fleet.hub import Hub
from fleet.store import FrameRecord


def frame(seq: int, device: str = "d1") -> FrameRecord:
    return FrameRecord("cam0", seq, seq, 0.0, [], device)


def test_a_slow_watcher_loses_only_its_own_frames_and_counts_them():
    hub = Hub()
    slow = hub.watch(lambda f: f, maxsize=2)
    fast = hub.watch(lambda f: f, maxsize=100)
    hub.publish([frame(s) for s in range(1, 6)])
    assert (slow.queue.qsize(), slow.dropped) == (2, 3)
    assert (fast.queue.qsize(), fast.dropped) == (5, 0)
    assert slow.queue.get_nowait().sequence == 1  # it keeps the oldest it had room for


def test_filters_and_unwatch():
    hub = Hub()
    only_d2 = hub.watch(lambda f: f if f.device_id == "d2" else None)
    hub.publish([frame(1, "d1"), frame(2, "d2")])
    assert only_d2.queue.qsize() == 1
    hub.unwatch(only_d2)
    hub.publish([frame(3, "d2")])
    assert only_d2.queue.qsize() == 1


def test_sessions_are_counted_per_device():
    hub = Hub()
    hub.session_opened("d1")
    hub.session_opened("d1")
    hub.session_closed("d1")
    assert hub.connected("d1")
    hub.session_closed("d1")
    assert not hub.connected("d1")
