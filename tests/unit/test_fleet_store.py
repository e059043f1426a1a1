from __future__ import annotations

import pytest

from edgefleet.fleet.auth import Role
from edgefleet.fleet.detection_store import FrameRecord, ObjectRecord
from edgefleet.fleet.errors import NotFound
from edgefleet.fleet.store import SCHEMA_VERSION, FleetStore


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


def test_a_v1_database_is_migrated_and_keeps_its_devices(tmp_path):
    store = FleetStore(tmp_path / "fleet.db")
    device, token = enroll(store)
    # Turn it back into the v1 layout: no operator tokens, no plan overrides, nothing of v3.
    for table in ("events", "rollout_devices", "rollouts", "artifacts", "health_samples", "operator_tokens"):
        store.db.execute(f"drop table {table}")
    store.db.execute("drop index idx_detections_received")
    store.db.execute("alter table devices drop column plan_override")
    for table in ("objects", "object_counts", "snapshots", "object_snapshots"):  # nothing of v5
        store.db.execute(f"drop table {table}")
    for table in ("desired_configs", "audit"):  # and nothing of v4
        store.db.execute(f"drop table {table}")
    for column in ("operator_labels", "revoked", "config_status", "records_stored"):
        store.db.execute(f"alter table devices drop column {column}")
    store.db.execute("PRAGMA user_version=1")
    store.close()
    store = FleetStore(tmp_path / "fleet.db")
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store.principal_for_token(token).subject == device.device_id
        assert store.get_device(device.device_id).plan_override == {}
        assert store.principal_for_token(store.create_operator_token()).role == Role.OPERATOR
    finally:
        store.close()


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
