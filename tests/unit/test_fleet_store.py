from __future__ import annotations

import pytest

from fleet.errors import NotFound, Unauthenticated
from fleet.store import FleetStore, FrameRecord, ObjectRecord


@pytest.fixture
def store(tmp_path):
    s = FleetStore(tmp_path / "fleet.db")
    yield s
    s.close()


def enroll(store: FleetStore, hardware_id: str = "hw-1"):
    key = store.create_enroll_key("t")
    return store.enroll(key, hardware_id, "cam-host", "0.1.0", {"platform": "x86_64-cpu"}, {})


def frames(*sequences: int) -> list[FrameRecord]:
    return [
        FrameRecord("cam0", seq, seq - 1, 1000.0 + seq, [ObjectRecord(1, 0, "person", 0.8, (1, 2, 3, 4))])
        for seq in sequences
    ]


def test_enroll_issues_a_token_that_maps_back_to_the_device(store):
    device, token = enroll(store)
    assert device.device_id.startswith("cam-host-")
    assert store.device_for_token(token) == device.device_id
    assert store.device_for_token("efd_wrong") is None


def test_reenrolling_the_same_box_keeps_its_id_and_rotates_the_token(store):
    first, old = enroll(store)
    again, new = enroll(store)
    assert again.device_id == first.device_id
    assert store.device_for_token(old) is None
    assert store.device_for_token(new) == first.device_id


def test_unknown_enroll_key_is_refused(store):
    with pytest.raises(Unauthenticated):
        store.enroll("efk_nope", "hw", "h", "v", {}, {})


def test_store_frames_is_idempotent_and_acks_the_highest_sequence(store):
    device, _ = enroll(store)
    first = store.store_frames(device.device_id, frames(1, 2, 3))
    assert (first.acked_sequence, first.stored, first.duplicates) == (3, 3, 0)
    replay = store.store_frames(device.device_id, frames(2, 3, 4))
    assert (replay.acked_sequence, replay.stored, replay.duplicates) == (4, 1, 2)
    stored, total = store.list_detections(device.device_id, limit=100)
    assert [f.sequence for f in stored] == [1, 2, 3, 4]
    assert total == 4
    assert stored[0].objects[0].label == "person"


def test_list_detections_newest_first_window_and_after_sequence(store):
    device, _ = enroll(store)
    store.store_frames(device.device_id, frames(*range(1, 11)))
    newest, _ = store.list_detections(device.device_id, limit=3)
    assert [f.sequence for f in newest] == [8, 9, 10]
    after, _ = store.list_detections(device.device_id, after_sequence=4, limit=2)
    assert [f.sequence for f in after] == [5, 6]


def test_unknown_device_is_not_found(store):
    with pytest.raises(NotFound):
        store.store_frames("nope", frames(1))
