"""Desired configuration and the audit table in the store, on both backends: versions per device only
go up, what a status leaves pending, what survives a restart, the audit log's window; and on
PostgreSQL, two documents set at once by two replicas get two versions."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from edgefleet.fleet.audit_store import AuditRecord
from edgefleet.fleet.errors import NotFound
from edgefleet.fleet.twin import Twin
from edgefleet.fleet.twin_store import config_view, status_dict

from .test_devices import wait_for_lock_waiters


def enroll_two(store) -> list[str]:
    key = store.create_enroll_key()
    return [store.enroll(key, hardware, hardware, "0", {}, {})[0].device_id for hardware in ("hw-a", "hw-b")]


def test_each_device_counts_its_own_versions_above_what_it_reported(store):
    a, b = enroll_two(store)
    assert [config_view(d).desired_version for d in store.set_desired_configs([a], "loop: true\n", "device")] == [1]
    store.record_config_status(b, status_dict(7, 0, [], "loop: true\n", "at start"))  # from an earlier controller
    both = store.set_desired_configs([a, b], "detect-interval: 3\n", "site=lab")
    assert [(config_view(d).desired_version, config_view(d).desired_from) for d in both] == \
        [(2, "site=lab"), (8, "site=lab")]
    store.record_config_status(a, status_dict(1, 9, ["bad"], "", "live"))
    assert config_view(store.set_desired_configs([a], "", "device")[0]).desired_version == 10


def test_one_device_named_twice_gets_two_versions(store):
    a, _ = enroll_two(store)
    assert [config_view(d).desired_version for d in store.set_desired_configs([a, a], "loop: true\n", "x")] == [2, 2]


@pytest.mark.parametrize("desired, applied, refused, pending", [
    (0, 0, 0, False),   # nothing desired
    (3, 0, 0, True),    # set while away
    (3, 2, 0, True),    # runs an older one
    (3, 3, 0, False),   # runs it
    (3, 2, 3, False),   # refused it: not sent again until the operator sets another
])
def test_what_a_hello_leaves_pending(store, desired, applied, refused, pending):
    device_id = enroll_two(store)[0]
    for _ in range(desired):
        store.set_desired_configs([device_id], "loop: true\n", "device")
    device = store.record_config_status(device_id, status_dict(applied, refused, [], "", "live"))
    assert config_view(device).pending is pending
    assert (Twin(None, None).pending(device) is not None) is pending  # type: ignore[arg-type]
    assert config_view(device).in_sync is (applied == desired)


def test_the_store_keeps_desired_and_reported_across_reopening(store_factory):
    store = store_factory()
    device_id = enroll_two(store)[0]
    store.set_desired_configs([device_id], "motion-gate: 2\n", "device")
    store.record_config_status(device_id, status_dict(1, 0, ["a", "b"], "motion-gate: 2\n", "live"))
    store.close()
    view = config_view(store_factory().get_device(device_id))
    assert (view.desired_version, view.desired_document, view.desired_from) == (1, "motion-gate: 2\n", "device")
    assert (view.applied_version, view.errors, view.how, view.in_sync) == (1, ("a", "b"), "live", True)


def test_an_unknown_device_among_several_writes_no_document(store):
    a, b = enroll_two(store)
    with pytest.raises(NotFound, match="device 'nope' is not enrolled"):
        store.set_desired_configs([a, "nope", b], "loop: true\n", "device")
    assert [d.config for d in store.list_devices()] == [{}, {}]
    with pytest.raises(NotFound, match="device 'nope' is not enrolled"):
        store.record_config_status("nope", status_dict(1, 0, [], "", "live"))


def audit(when: float, call: str, ok: bool = True, **fields) -> AuditRecord:
    return AuditRecord(when, fields.get("token_id", "abc123"), fields.get("token_name", "alice"),
                       fields.get("role", "operator"), call, fields.get("target", "cam-1"),
                       fields.get("parameters", '{"a": 1}'), ok, fields.get("error", ""))


def test_audit_entries_come_back_as_written_with_rising_ids(store):
    first = store.add_audit(audit(100.0, "/edgefleet.v1.FleetControl/RevokeDevice"))
    second = store.add_audit(audit(101.0, "/edgefleet.v1.FleetControl/SetPlan", ok=False, error="NOT_FOUND: x",
                                   token_id="", token_name="", role="", target="", parameters=""))
    assert 0 < first < second
    assert store.list_audit() == [
        AuditRecord(100.0, "abc123", "alice", "operator", "/edgefleet.v1.FleetControl/RevokeDevice", "cam-1",
                    '{"a": 1}', True, "", first),
        AuditRecord(101.0, "", "", "", "/edgefleet.v1.FleetControl/SetPlan", "", "{}", False, "NOT_FOUND: x", second),
    ]


def test_the_audit_window_is_the_newest_since_a_time_oldest_first(store):
    for i in range(10):
        store.add_audit(audit(1000.0 + i, f"call-{i}"))
    assert [r.call for r in store.list_audit(limit=3)] == ["call-7", "call-8", "call-9"]
    assert [r.call for r in store.list_audit(since=1008.0)] == ["call-8", "call-9"]
    assert [r.call for r in store.list_audit(since=1002.0, limit=2)] == ["call-8", "call-9"]
    assert store.list_audit(since=2000.0) == [] and store.list_audit(limit=0) == []
    assert len(store.list_audit(limit=-1)) == 10


def test_two_replicas_setting_one_devices_document_at_once_get_two_versions(pg_replicas, pg_url):
    """Both calls read the device's versions while another transaction holds its row: each must read
    what the other wrote, or both store version 1 and one document is lost unnoticed."""
    import psycopg

    (a, b), url = pg_replicas, pg_url
    device_id, other = enroll_two(a)
    with ThreadPoolExecutor(2) as pool, psycopg.connect(url, autocommit=True) as holder:
        holder.execute("begin")
        holder.execute("select 1 from devices where device_id = %s for update", [device_id])
        futures = [pool.submit(a.set_desired_configs, [device_id, other], "loop: true\n", "a"),
                   pool.submit(b.set_desired_configs, [other, device_id], "loop: false\n", "b")]
        wait_for_lock_waiters(url, 2)
        holder.execute("commit")
        results = [future.result(timeout=30) for future in futures]
    versions = sorted(config_view(device).desired_version for devices in results for device in devices)
    assert versions == [1, 1, 2, 2]
    assert {config_view(d).desired_version for d in b.list_devices()} == {2}
