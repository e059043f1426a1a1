"""The controller's side of desired configuration: versions per device only go up, what a hello's
status leaves pending, and what SetDesiredConfig refuses before storing anything."""
from __future__ import annotations

import pytest

from edgefleet.fleet.errors import InvalidArgument
from edgefleet.fleet.store import FleetStore
from edgefleet.fleet.twin import Twin, check_request, describe_status
from edgefleet.fleet.twin_store import DeviceConfigView as View
from edgefleet.fleet.twin_store import config_view, status_dict


@pytest.fixture
def store(tmp_path):
    store = FleetStore(tmp_path / "fleet.db")
    key = store.create_enroll_key()
    for hardware in ("hw-a", "hw-b"):
        store.enroll(key, hardware, hardware, "0", {}, {})
    yield store
    store.close()


def ids(store: FleetStore) -> list[str]:
    return [d.device_id for d in store.list_devices()]


def test_each_device_counts_its_own_versions_above_what_it_reported(store):
    a, b = ids(store)
    assert [config_view(d).desired_version for d in store.set_desired_configs([a], "loop: true\n", "device")] == [1]
    store.record_config_status(b, status_dict(7, 0, [], "loop: true\n", "at start"))  # from an earlier controller
    both = store.set_desired_configs([a, b], "detect-interval: 3\n", "site=lab")
    assert [(config_view(d).desired_version, config_view(d).desired_from) for d in both] == \
        [(2, "site=lab"), (8, "site=lab")]
    store.record_config_status(a, status_dict(1, 9, ["bad"], "", "live"))
    assert config_view(store.set_desired_configs([a], "", "device")[0]).desired_version == 10


@pytest.mark.parametrize("desired, applied, refused, pending", [
    (0, 0, 0, False),   # nothing desired
    (3, 0, 0, True),    # set while away
    (3, 2, 0, True),    # runs an older one
    (3, 3, 0, False),   # runs it
    (3, 2, 3, False),   # refused it: not sent again until the operator sets another
])
def test_what_a_hello_leaves_pending(store, desired, applied, refused, pending):
    device_id = ids(store)[0]
    for _ in range(desired):
        store.set_desired_configs([device_id], "loop: true\n", "device")
    device = store.record_config_status(device_id, status_dict(applied, refused, [], "", "live"))
    assert config_view(device).pending is pending
    assert (Twin(None, None).pending(device) is not None) is pending  # type: ignore[arg-type]
    assert config_view(device).in_sync is (applied == desired)


def test_the_store_keeps_desired_and_reported_across_reopening(store, tmp_path):
    device_id = ids(store)[0]
    store.set_desired_configs([device_id], "motion-gate: 2\n", "device")
    store.record_config_status(device_id, status_dict(1, 0, [], "motion-gate: 2\n", "live"))
    store.close()
    again = FleetStore(tmp_path / "fleet.db")
    view = config_view(again.get_device(device_id))
    assert (view.desired_version, view.applied_version, view.how, view.in_sync) == (1, 1, "live", True)
    again.close()


@pytest.mark.parametrize("document, clear, message", [
    ("", False, "document is empty"),
    ("loop: true\n", True, "clear=true removes the document"),
    ("controller: x:1\n", False, "document:1: controller: set on the device only"),
    ("detect-interval: 0\nloop: 3\n", False, "must be >= 1, got 0; document:2: loop: must be true or false"),
    ("detect-interval: [1\n", False, "not valid YAML"),
])
def test_the_controller_refuses_what_it_can_see(document, clear, message):
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_request(document, clear)


def test_what_events_say():
    assert describe_status(View("d", 2, applied_version=2, how="live")) == "runs desired config v2 (live)"
    assert describe_status(View("d", 3, applied_version=2, refused_version=3, errors=("no such file",))) == \
        "refused desired config v3: no such file"


@pytest.mark.parametrize("config, text", [
    ({}, ""),
    ({"desired_version": 2, "applied_version": 2, "in_sync": True, "how": "live"}, "v2 applied, in sync (live)"),
    ({"desired_version": 3, "applied_version": 2}, "v2 applied, v3 desired (not applied yet)"),
    ({"desired_version": 3, "applied_version": 2, "refused_version": 3, "errors": ["no such file"]},
     "v2 applied, v3 desired: refused: no such file"),
])
def test_the_tui_shows_drift(config, text):
    from edgefleet.tui.convert import config_drift
    from edgefleet.v1 import fleet_pb2

    assert config_drift(fleet_pb2.DeviceConfig(**config)) == text
