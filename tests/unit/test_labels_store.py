"""Device labels in the store: the device's own (enroll, Hello), the operator's, which wins, and selection."""
from __future__ import annotations

import pytest

from edgefleet.fleet.errors import InvalidArgument, NotFound
from edgefleet.fleet.selectors import parse_selector
from edgefleet.fleet.store import FleetStore


@pytest.fixture
def store(tmp_path):
    s = FleetStore(tmp_path / "fleet.db")
    yield s
    s.close()


def enroll(store: FleetStore, name: str, labels: dict[str, str]) -> str:
    key = store.create_enroll_key("t")
    device, _ = store.enroll(key, f"hw-{name}", name, "0.1.0", {}, labels)
    return device.device_id


def test_operator_labels_win_over_the_devices_own_and_removing_them_uncovers_it(store):
    device_id = enroll(store, "cam", {"site": "lab", "tier": "a"})
    device = store.set_operator_labels(device_id, {"site": "yard", "owner": "ops"}, [])
    assert device.reported_labels == {"site": "lab", "tier": "a"}
    assert device.operator_labels == {"site": "yard", "owner": "ops"}
    assert device.labels == {"site": "yard", "tier": "a", "owner": "ops"}
    device = store.set_operator_labels(device_id, {}, ["site"])
    assert device.labels == {"site": "lab", "tier": "a", "owner": "ops"}
    assert store.get_device(device_id).operator_labels == {"owner": "ops"}


def test_a_hello_replaces_the_devices_own_labels_and_keeps_the_operators(store):
    device_id = enroll(store, "cam", {"site": "lab"})
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
    device_id = enroll(store, "cam", {"tier": "a"})
    with pytest.raises(InvalidArgument, match=says):
        store.set_operator_labels(device_id, set_labels, remove)
    assert store.get_device(device_id).operator_labels == {}


def test_labels_of_an_unknown_device_are_not_found(store):
    with pytest.raises(NotFound):
        store.set_operator_labels("nope", {"site": "lab"}, [])


def test_devices_matching_uses_the_merged_labels(store):
    lab = enroll(store, "lab-cam", {"site": "lab"})
    yard = enroll(store, "yard-cam", {"site": "yard"})
    moved = enroll(store, "moved-cam", {"site": "yard"})
    store.set_operator_labels(moved, {"site": "lab"}, [])

    def ids(text: str) -> list[str]:
        return [d.device_id for d in store.devices_matching(parse_selector(text))]

    assert ids("site=lab") == sorted([lab, moved])
    assert ids("site!=lab") == [yard]
    assert ids("site in (lab,yard),!owner") == sorted([lab, moved, yard])
    assert ids("") == sorted([lab, moved, yard])
    assert ids("owner") == []
