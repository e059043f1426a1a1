from __future__ import annotations

import pytest

from edgefleet.fleet.auth import Access, Principal, Role
from edgefleet.fleet.detection_store import FrameRecord, ObjectRecord
from edgefleet.fleet.errors import NotFound, Unauthenticated
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


def test_enroll_issues_a_token_that_maps_back_to_the_device(store):
    device, token = enroll(store)
    assert device.device_id.startswith("cam-host-")
    assert store.principal_for_token(token) == Principal(Role.DEVICE, device.device_id)
    assert store.principal_for_token("efd_wrong") is None


def test_reenrolling_the_same_box_keeps_its_id_and_rotates_the_token(store):
    first, old = enroll(store)
    again, new = enroll(store)
    assert again.device_id == first.device_id
    assert store.principal_for_token(old) is None
    assert store.principal_for_token(new).subject == first.device_id


@pytest.mark.parametrize("by", ["id", "secret"])
def test_a_revoked_enroll_key_is_refused_but_its_devices_keep_their_tokens(store, by):
    key = store.create_enroll_key("lab")
    device, token = store.enroll(key, "hw-1", "cam", "v", {}, {})
    (listed,) = store.list_enroll_keys()
    assert (listed.name, listed.revoked) == ("lab", False)
    revoked = store.revoke_enroll_key(listed.id if by == "id" else key)
    assert (revoked.id, revoked.revoked) == (listed.id, True)
    with pytest.raises(Unauthenticated):
        store.enroll(key, "hw-2", "cam", "v", {}, {})
    assert store.principal_for_token(token).subject == device.device_id
    with pytest.raises(NotFound):
        store.revoke_enroll_key("no-such-id")


def test_operator_tokens_are_stored_hashed_and_revocable(store):
    token = store.create_operator_token("alice")
    (listed,) = store.list_operator_tokens()
    assert token.startswith("efo_") and token not in repr(listed)
    assert store.principal_for_token(token) == Principal(Role.OPERATOR, listed.id, "alice", Access.OPERATOR)
    assert listed.role == "operator"  # the default role
    store.revoke_operator_token(listed.id)
    assert store.principal_for_token(token) is None
    assert store.list_operator_tokens()[0].revoked


def test_plan_override_is_stored_and_cleared(store):
    device, _ = enroll(store)
    assert store.set_plan_override(device.device_id, {"max_input_size": 320}).plan_override == {"max_input_size": 320}
    assert store.get_device(device.device_id).plan_override == {"max_input_size": 320}
    assert store.set_plan_override(device.device_id, {}).plan_override == {}


def test_a_v1_database_is_migrated_and_keeps_its_devices(tmp_path):
    store = FleetStore(tmp_path / "fleet.db")
    device, token = enroll(store)
    # Turn it back into the v1 layout: no operator tokens, no plan overrides, nothing of v3.
    for table in ("events", "rollout_devices", "rollouts", "artifacts", "health_samples", "operator_tokens"):
        store.db.execute(f"drop table {table}")
    store.db.execute("drop index idx_detections_received")
    store.db.execute("alter table devices drop column plan_override")
    for table in ("desired_configs", "audit"):  # and nothing of v4
        store.db.execute(f"drop table {table}")
    for column in ("operator_labels", "revoked", "config_status"):
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


def test_an_mqtt_only_device_joins_and_stays_current(store):
    device = store.upsert_mqtt_device("garage-cam", available="online")
    assert (device.device_id, device.hardware_id, device.labels) == (
        "garage-cam", "mqtt:garage-cam", {"transport": "mqtt", "available": "online"})
    seen = device.last_seen
    assert seen is not None
    device = store.upsert_mqtt_device("garage-cam", health={"fps": 9.5, "streams": []}, stream_id="cam0")
    assert device.health == {"fps": 9.5, "streams": []} and device.streams == ["cam0"]
    device = store.upsert_mqtt_device("garage-cam", available="offline", stream_id="cam0")
    assert device.labels["available"] == "offline" and device.streams == ["cam0"]
    assert device.last_seen >= seen
    assert [d.device_id for d in store.list_devices()] == ["garage-cam"]
    assert store.principal_for_token("mqtt:garage-cam") is None, "an MQTT-only device has no token"


def test_mqtt_leaves_a_revoked_mqtt_only_device_alone(store):
    store.upsert_mqtt_device("garage-cam", available="online")
    store.revoke_device("garage-cam")
    assert store.upsert_mqtt_device("garage-cam", health={"fps": 1.0}) is None
    assert store.get_device("garage-cam").health == {}, "the bridge stops updating it until it is removed"


def test_mqtt_leaves_a_grpc_enrolled_device_alone(store):
    device, _ = enroll(store)
    assert store.upsert_mqtt_device(device.device_id, available="offline", health={"fps": 1.0}) is None
    assert store.get_device(device.device_id).health == {}
