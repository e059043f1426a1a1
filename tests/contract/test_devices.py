"""The store's devices on both backends: secrets, enrollment, sessions, labels and selection, the MQTT
bridge's devices, revocation and removal; and on PostgreSQL, two replicas doing the same at once."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from edgefleet.fleet.auth import Access, Principal, Role
from edgefleet.fleet.detection_store import FrameRecord, ObjectRecord
from edgefleet.fleet.errors import InvalidArgument, NotFound, Unauthenticated
from edgefleet.fleet.selectors import combined, parse_selector


def frames(*sequences: int) -> list[FrameRecord]:
    return [FrameRecord("cam0", seq, seq - 1, 1000.0 + seq, [ObjectRecord(1, 0, "person", 0.8, (1, 2, 3, 4))])
            for seq in sequences]


def enroll(store, hardware_id: str = "hw-1", hostname: str = "cam-host", labels: dict | None = None):
    key = store.create_enroll_key("t")
    return store.enroll(key, hardware_id, hostname, "0.1.0", {"platform": "x86_64-cpu"}, labels or {})


def enroll_id(store, name: str, labels: dict[str, str]) -> str:
    device, _ = enroll(store, f"hw-{name}", name, labels)
    return device.device_id


# ---- secrets and enrollment ----


def test_enroll_issues_a_token_that_maps_back_to_the_device(store):
    device, token = enroll(store)
    assert device.device_id.startswith("cam-host-")
    assert (device.hostname, device.hardware_id, device.agent_version) == ("cam-host", "hw-1", "0.1.0")
    assert (device.profile, device.plan, device.health, device.streams) == ({"platform": "x86_64-cpu"}, {}, {}, [])
    assert store.principal_for_token(token) == Principal(Role.DEVICE, device.device_id)
    assert store.principal_for_token("efd_wrong") is None


def test_reenrolling_the_same_box_keeps_its_id_and_rotates_the_token(store):
    first, old = enroll(store)
    again, new = enroll(store, hostname="renamed")
    assert again.device_id == first.device_id
    assert (again.hostname, again.enrolled) == ("renamed", first.enrolled)
    assert store.principal_for_token(old) is None
    assert store.principal_for_token(new).subject == first.device_id
    assert [d.device_id for d in store.list_devices()] == [first.device_id]


@pytest.mark.parametrize("by", ["id", "secret"])
def test_a_revoked_enroll_key_is_refused_but_its_devices_keep_their_tokens(store, by):
    key = store.create_enroll_key("lab")
    device, token = store.enroll(key, "hw-1", "cam", "v", {}, {})
    (listed,) = store.list_enroll_keys()
    assert (listed.name, listed.revoked, listed.role) == ("lab", False, "")
    revoked = store.revoke_enroll_key(listed.id if by == "id" else key)
    assert (revoked.id, revoked.revoked) == (listed.id, True)
    with pytest.raises(Unauthenticated, match="unknown or revoked enrollment key"):
        store.enroll(key, "hw-2", "cam", "v", {}, {})
    assert store.principal_for_token(token).subject == device.device_id
    with pytest.raises(NotFound, match="no enrollment key with id 'no-such-id'"):
        store.revoke_enroll_key("no-such-id")


def test_a_given_enroll_key_created_again_is_valid_again(store):
    store.create_enroll_key("first", key="efk_fixed")
    store.revoke_enroll_key("efk_fixed")
    store.create_enroll_key("second", key="efk_fixed")
    (listed,) = store.list_enroll_keys()
    assert (listed.name, listed.revoked) == ("second", False)
    assert store.enroll("efk_fixed", "hw-1", "cam", "v", {}, {})[0].hardware_id == "hw-1"


def test_operator_tokens_are_stored_hashed_and_revocable(store):
    token = store.create_operator_token("alice")
    admin = store.create_operator_token("root", Access.ADMIN)
    listed, root = store.list_operator_tokens()
    assert token.startswith("efo_") and token not in repr(listed)
    assert store.principal_for_token(token) == Principal(Role.OPERATOR, listed.id, "alice", Access.OPERATOR)
    assert (listed.role, root.role) == ("operator", "admin")
    assert store.principal_for_token(admin).access == Access.ADMIN
    store.revoke_operator_token(listed.id)
    assert store.principal_for_token(token) is None
    assert [t.revoked for t in store.list_operator_tokens()] == [True, False]
    with pytest.raises(NotFound, match="no operator token"):
        store.revoke_operator_token("efo_unknown")


def test_unknown_enroll_key_is_refused(store):
    with pytest.raises(Unauthenticated):
        store.enroll("efk_nope", "hw", "h", "v", {}, {})


def test_an_empty_hardware_id_is_refused(store):
    key = store.create_enroll_key()
    with pytest.raises(InvalidArgument, match="hardware_id is empty"):
        store.enroll(key, "", "h", "v", {}, {})


def test_a_device_enrolled_through_one_store_is_seen_by_another(store_factory):
    first = store_factory()
    device, token = enroll(first)
    second = store_factory()  # another replica, or the same controller restarted
    assert second.get_device(device.device_id) == device
    assert second.principal_for_token(token).subject == device.device_id


# ---- sessions ----


def test_hello_and_heartbeats_keep_the_latest_and_plan_overrides_are_stored(store):
    device, _ = enroll(store)
    hello = store.record_hello(device.device_id, "0.2.0", {"cpu": 4}, {"model": "a"}, ["cam0", "cam1"])
    assert (hello.agent_version, hello.profile, hello.plan, hello.streams) == ("0.2.0", {"cpu": 4}, {"model": "a"},
                                                                                ["cam0", "cam1"])
    assert hello.last_seen is not None
    beat = store.record_heartbeat(device.device_id, {"fps": 12.5, "frames_dropped": "3"}, None, now=5000.0)
    assert (beat.health, beat.plan, beat.last_seen) == ({"fps": 12.5, "frames_dropped": "3"}, {"model": "a"}, 5000.0)
    beat = store.record_heartbeat(device.device_id, {"fps": 1.0}, {"model": "b"}, now=5001.0)
    assert beat.plan == {"model": "b"}
    assert store.last_seen_by_device() == {device.device_id: 5001.0}
    assert store.set_plan_override(device.device_id, {"max_input_size": 320}).plan_override == {"max_input_size": 320}
    assert store.get_device(device.device_id).plan_override == {"max_input_size": 320}
    assert store.set_plan_override(device.device_id, {}).plan_override == {}


@pytest.mark.parametrize("call", [
    lambda s: s.record_hello("nope", "v", {}, {}, []),
    lambda s: s.record_heartbeat("nope", {"fps": 1.0}, None),
    lambda s: s.set_plan_override("nope", {"max_input_size": 320}),
    lambda s: s.get_device("nope"),
    lambda s: s.revoke_device("nope"),
    lambda s: s.remove_device("nope", purge_data=True),
    lambda s: s.set_operator_labels("nope", {"site": "lab"}, []),
])
def test_an_unknown_device_is_not_found(store, call):
    with pytest.raises(NotFound, match="device 'nope' is not enrolled"):
        call(store)
    assert store.list_devices() == [] and store.last_seen_by_device() == {}


def test_devices_are_listed_by_id_bytewise(store):
    for device_id in ("b", "a-b", "ab", "B", "a_b", "a.b"):
        store.upsert_mqtt_device(device_id, available="online")
    assert [d.device_id for d in store.list_devices()] == ["B", "a-b", "a.b", "a_b", "ab", "b"]


# ---- the MQTT bridge's devices ----


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


# ---- labels and selection ----


def test_operator_labels_win_over_the_devices_own_and_removing_them_uncovers_it(store):
    device_id = enroll_id(store, "cam", {"site": "lab", "tier": "a"})
    device = store.set_operator_labels(device_id, {"site": "yard", "owner": "ops"}, [])
    assert device.reported_labels == {"site": "lab", "tier": "a"}
    assert device.operator_labels == {"site": "yard", "owner": "ops"}
    assert device.labels == {"site": "yard", "tier": "a", "owner": "ops"}
    device = store.set_operator_labels(device_id, {}, ["site"])
    assert device.labels == {"site": "lab", "tier": "a", "owner": "ops"}
    assert store.get_device(device_id).operator_labels == {"owner": "ops"}


def test_a_hello_replaces_the_devices_own_labels_and_keeps_the_operators(store):
    device_id = enroll_id(store, "cam", {"site": "lab"})
    store.set_operator_labels(device_id, {"owner": "ops"}, [])
    device = store.record_hello(device_id, "0.2.0", {}, {}, ["cam0"], labels={"floor": "2"})
    assert device.labels == {"floor": "2", "owner": "ops"}
    device = store.record_hello(device_id, "0.2.0", {}, {}, ["cam0"])  # no labels given: left as they are
    assert device.reported_labels == {"floor": "2"}


@pytest.mark.parametrize(("set_labels", "remove", "says"), [
    ({"bad key": "x"}, [], "label key"),
    ({"site": "a b"}, [], "values use"),
    ({"site": "lab"}, ["site"], "both set and removed"),
    ({}, ["tier"], "the device's own"),
])
def test_refused_label_changes_write_nothing(store, set_labels, remove, says):
    device_id = enroll_id(store, "cam", {"tier": "a"})
    with pytest.raises(InvalidArgument, match=says):
        store.set_operator_labels(device_id, set_labels, remove)
    assert store.get_device(device_id).operator_labels == {}


@pytest.fixture
def labelled(store) -> dict[str, str]:
    """Five devices: name -> device id. moved-cam says site=yard, the operator says lab."""
    ids = {name: enroll_id(store, name, labels) for name, labels in [
        ("lab-cam", {"site": "lab", "tier": "a"}), ("yard-cam", {"site": "yard"}), ("moved-cam", {"site": "yard"}),
        ("bare-cam", {}), ("gpu-cam", {"gpu": "", "site": "lab.b/2"}),
    ]}
    store.set_operator_labels(ids["moved-cam"], {"site": "lab", "owner": "ops"}, [])
    return ids


@pytest.mark.parametrize(("selector", "names"), [
    ("", ["bare-cam", "gpu-cam", "lab-cam", "moved-cam", "yard-cam"]),
    ("site=lab", ["lab-cam", "moved-cam"]),
    ("site==yard", ["yard-cam"]),
    ("site!=lab", ["bare-cam", "gpu-cam", "yard-cam"]),
    ("site in (lab,yard)", ["lab-cam", "moved-cam", "yard-cam"]),
    ("site notin (lab,lab.b/2)", ["bare-cam", "yard-cam"]),
    ("site in (lab,yard),!owner", ["lab-cam", "yard-cam"]),
    ("owner", ["moved-cam"]),
    ("gpu", ["gpu-cam"]),
    ("gpu=", ["gpu-cam"]),
    ("!gpu,!site", ["bare-cam"]),
    ("tier=a,site=lab", ["lab-cam"]),
    ("nothing", []),
    ("nothing!=x", ["bare-cam", "gpu-cam", "lab-cam", "moved-cam", "yard-cam"]),
])
def test_devices_matching_uses_the_merged_labels(store, labelled, selector, names):
    matched = store.devices_matching(parse_selector(selector))
    assert [d.device_id for d in matched] == sorted(labelled[name] for name in names)


def test_devices_matching_a_requests_map_and_expression(store, labelled):
    matched = store.devices_matching(combined({"site": "lab"}, "owner"))
    assert [d.device_id for d in matched] == [labelled["moved-cam"]]


# ---- revocation and removal ----


def test_a_revoked_device_keeps_its_first_time_until_it_enrolls_again(store):
    device, token = enroll(store)
    revoked = store.revoke_device(device.device_id)
    assert revoked.revoked is not None
    assert store.principal_for_token(token) is None
    assert store.revoke_device(device.device_id).revoked == revoked.revoked
    again, new_token = enroll(store)
    assert (again.device_id, again.revoked) == (device.device_id, None)
    assert store.principal_for_token(new_token).subject == device.device_id


def test_a_removed_device_is_gone_with_its_desired_configuration(store):
    device, token = enroll(store)
    keep, _ = enroll(store, "hw-2")
    store.set_desired_configs([device.device_id, keep.device_id], "loop: true\n", "site=lab")
    assert store.remove_device(device.device_id, purge_data=False) == 0
    assert [d.device_id for d in store.list_devices()] == [keep.device_id]
    assert store.principal_for_token(token) is None
    again, _ = enroll(store)  # the same box again: a new device, no desired configuration
    assert again.device_id != device.device_id and again.config == {}
    assert store.get_device(keep.device_id).config["desired_version"] == 1


def test_removing_with_purge_deletes_its_detections_and_events_and_without_leaves_them(store):
    kept, _ = enroll(store, "hw-kept")
    purged, _ = enroll(store, "hw-purged")
    for device in (kept, purged):
        store.store_frames(device.device_id, frames(1, 2))
        store.record_heartbeat(device.device_id, {"fps": 3.0}, None)
        store.add_event("device", "went online", device_id=device.device_id)
    assert store.remove_device(kept.device_id, purge_data=False) == 0
    assert store.remove_device(purged.device_id, purge_data=True) == 2
    assert [f.sequence for f in store.list_detections(kept.device_id)[0]] == [1, 2], "left until retention"
    with pytest.raises(NotFound):
        store.list_detections(purged.device_id)
    assert [e.message for e in store.list_events(device_id=kept.device_id)] == ["went online"]
    assert store.list_events(device_id=purged.device_id) == []
    assert store.list_devices() == []


# ---- PostgreSQL: replicas at once ----



def wait_for_lock_waiters(url: str, count: int, timeout_s: float = 10.0) -> None:
    """Until `count` sessions of this database wait for a lock (read from a connection of its own: inside a
    transaction pg_stat_activity stays as it was first read)."""
    import psycopg

    deadline = time.monotonic() + timeout_s
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            row = conn.execute("select count(*) from pg_stat_activity where datname = current_database()"
                               " and wait_event_type = 'Lock'").fetchone()
            if row and row[0] >= count:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{row} sessions wait for a lock after {timeout_s} s, not {count}")
            time.sleep(0.02)


def test_two_replicas_enrolling_one_box_at_once_make_one_device(pg_replicas):
    """Many enrollments of the same hardware id, from two replicas' threads at once: one device, one token."""
    a, b = pg_replicas
    key = a.create_enroll_key()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: (a, b)[i % 2].enroll(key, "hw-same", "cam", "v", {}, {}), range(16)))
    (device,) = a.list_devices()
    assert {d.device_id for d, _ in results} == {device.device_id}
    assert sum(a.principal_for_token(token) is not None for _, token in results) == 1


def test_an_enrollment_waits_for_one_in_flight_and_updates_its_device(pg_replicas, pg_url):
    """A replica's enrollment of the box is uncommitted while two more start: they wait on the unique
    hardware id, then update its row (a check before inserting would have seen no row, and failed)."""
    import psycopg

    from edgefleet.fleet.store import enrollment_values, new_device_row

    (a, b), url = pg_replicas, pg_url
    key = a.create_enroll_key()
    row = new_device_row("first-000000", "hw-same", 1.0, enrollment_values("efd_first", "cam", "v", {}, {}))
    with ThreadPoolExecutor(2) as pool, psycopg.connect(url, autocommit=True) as holder:
        holder.execute("begin")
        holder.execute(f"insert into devices ({', '.join(row)}) values ({', '.join(['%s'] * len(row))})",
                       list(row.values()))
        futures = [pool.submit(store.enroll, key, "hw-same", "cam", "v", {}, {}) for store in (a, b)]
        wait_for_lock_waiters(url, 2)
        holder.execute("commit")
        results = [future.result(timeout=30) for future in futures]
    assert [d.device_id for d, _ in results] == ["first-000000", "first-000000"]
    assert [d.device_id for d in a.list_devices()] == ["first-000000"]
    assert sorted(b.principal_for_token(token) is not None for _, token in results) == [False, True]
    assert b.principal_for_token("efd_first") is None


def test_two_replicas_changing_labels_at_once_keep_both_changes(pg_replicas, pg_url):
    """Both calls read the labels while another transaction holds the row: each must read after the other
    wrote, or one's label is lost."""
    import psycopg

    (a, b), url = pg_replicas, pg_url
    device_id = enroll_id(a, "cam", {})
    with ThreadPoolExecutor(2) as pool, psycopg.connect(url, autocommit=True) as holder:
        holder.execute("begin")
        holder.execute("select 1 from devices where device_id = %s for update", [device_id])
        futures = [pool.submit(a.set_operator_labels, device_id, {"site": "lab"}, []),
                   pool.submit(b.set_operator_labels, device_id, {"owner": "ops"}, [])]
        wait_for_lock_waiters(url, 2)
        holder.execute("commit")
        for future in futures:
            future.result(timeout=30)
    assert b.get_device(device_id).operator_labels == {"site": "lab", "owner": "ops"}
