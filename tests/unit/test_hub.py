from __future__ import annotations

from edgefleet.fleet.detection_store import FrameRecord
from edgefleet.fleet.hub import Command, Hub, Topic
from edgefleet.fleet.store import DeviceRecord


def frame(seq: int, device: str = "d1") -> FrameRecord:
    return FrameRecord("cam0", seq, seq, 0.0, [], device)


def test_a_slow_watcher_loses_only_its_own_items_and_counts_them():
    topic = Topic()
    slow = topic.watch(maxsize=2)
    fast = topic.watch(maxsize=100)
    topic.publish([frame(s) for s in range(1, 6)])
    assert (slow.queue.qsize(), slow.dropped) == (2, 3)
    assert (fast.queue.qsize(), fast.dropped) == (5, 0)
    assert slow.queue.get_nowait().sequence == 1  # it keeps the oldest it had room for


def test_filters_and_unwatch():
    topic = Topic()
    only_d2 = topic.watch(lambda f: f if f.device_id == "d2" else None)
    topic.publish([frame(1, "d1"), frame(2, "d2")])
    assert only_d2.queue.qsize() == 1
    topic.unwatch(only_d2)
    topic.publish([frame(3, "d2")])
    assert only_d2.queue.qsize() == 1


def test_commands_reach_every_open_session_of_the_device_only():
    hub = Hub()
    first, second = hub.open_session("d1"), hub.open_session("d1")
    other = hub.open_session("d2")
    assert hub.send("d1", Command("ping", {})) == 2
    assert (first.qsize(), second.qsize(), other.qsize()) == (1, 1, 0)
    hub.close_session("d1", first)
    assert hub.connected("d1")
    hub.close_session("d1", second)
    assert not hub.connected("d1")
    assert hub.send("d1", Command("ping", {})) == 0


def test_a_session_that_does_not_read_loses_commands_not_the_sender():
    hub = Hub()
    stuck = hub.open_session("d1")
    sent = [hub.send("d1", Command("ping", {})) for _ in range(stuck.maxsize + 3)]
    assert sent.count(1) == stuck.maxsize and sent.count(0) == 3


def test_device_changes_carry_whether_the_device_is_connected():
    hub = Hub()
    watcher = hub.fleet.watch()
    device = DeviceRecord("d1", "cam", "hw", 0.0)
    hub.device_changed(device, "cam enrolled")
    hub.open_session("d1")
    hub.device_changed(device)
    changes = [watcher.queue.get_nowait() for _ in range(2)]
    assert [(c.device.device_id, c.connected, c.message) for c in changes] == [
        ("d1", False, "cam enrolled"), ("d1", True, ""),
    ]

