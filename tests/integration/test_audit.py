"""The audit log against a real controller: every mutating FleetControl call leaves its row, secrets never."""
from __future__ import annotations

import hashlib
import json
import threading

import grpc
import pytest

from edgefleet.fleet.audit_store import AuditRecord
from edgefleet.fleet.auth import FLEET_CONTROL_ACCESS, Access
from edgefleet.fleet.channel import open_channel
from edgefleet.v1 import fleet_pb2, fleet_pb2_grpc, types_pb2

from ..conftest import ControllerThread, wait_for
from .test_gateway import enroll

MUTATING = sorted(name for name, call in FLEET_CONTROL_ACCESS.items() if call.mutating)
CHUNK = b"\x07" * 5000
SECRET = "hunter2-do-not-log"
MISSING_SHA = "0" * 64


def _upload():
    manifest = types_pb2.ArtifactManifest(name="audited", format="onnx")
    return iter([fleet_pb2.UploadArtifactRequest(manifest=manifest),
                 fleet_pb2.UploadArtifactRequest(chunk=CHUNK),
                 fleet_pb2.UploadArtifactRequest(chunk=CHUNK)])


# Each mutating call, a request for it naming a target, and that target. A mutating call added to
# FLEET_CONTROL_ACCESS without an entry here fails test_every_mutating_call_leaves_a_row.
REQUESTS = {
    "SetPlanOverride": (lambda: fleet_pb2.SetPlanOverrideRequest(
        device_id="dev-gone", plan=types_pb2.SetPlan(clear=True)), "dev-gone"),
    "SendCommand": (lambda: fleet_pb2.SendCommandRequest(device_id="dev-gone", ping=True, timeout_ms=500),
                    "dev-gone"),
    "SetDeviceLabels": (lambda: fleet_pb2.SetDeviceLabelsRequest(device_id="dev-gone", set={"site": "lab"}),
                        "dev-gone"),
    "SetDesiredConfig": (lambda: fleet_pb2.SetDesiredConfigRequest(
        device_id="dev-gone", document=f"detect_interval: 2\nmqtt:\n  password: {SECRET}\n"), "dev-gone"),
    "RevokeDevice": (lambda: fleet_pb2.RevokeDeviceRequest(device_id="dev-gone", reason="stolen"), "dev-gone"),
    "RemoveDevice": (lambda: fleet_pb2.RemoveDeviceRequest(device_id="dev-gone"), "dev-gone"),
    "UploadArtifact": (_upload, hashlib.sha256(CHUNK + CHUNK).hexdigest()),
    "CreateRollout": (lambda: fleet_pb2.CreateRolloutRequest(artifact_sha256=MISSING_SHA, select="site=lab"),
                      MISSING_SHA),
    "PauseRollout": (lambda: fleet_pb2.RolloutRef(rollout_id="ro-gone"), "ro-gone"),
    "ResumeRollout": (lambda: fleet_pb2.RolloutRef(rollout_id="ro-gone"), "ro-gone"),
    "AbortRollout": (lambda: fleet_pb2.RolloutRef(rollout_id="ro-gone", reason="oops"), "ro-gone"),
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    ctl = ControllerThread(tmp_path_factory.mktemp("audit") / "fleet.db")
    ctl.tokens = {access: ctl.controller.store.create_operator_token(f"{access.label}-bob", access)
                  for access in Access}
    yield ctl
    ctl.stop()


def stub(fleet, access: Access) -> fleet_pb2_grpc.FleetControlStub:
    return fleet_pb2_grpc.FleetControlStub(open_channel(fleet.address, token=fleet.tokens[access]))


def rows(fleet, call: str) -> list[fleet_pb2.AuditEntry]:
    entries = stub(fleet, Access.ADMIN).ListAudit(fleet_pb2.ListAuditRequest(limit=10_000), timeout=5).entries
    return [e for e in entries if e.call == call]


def make_call(fleet, access: Access, name: str) -> grpc.StatusCode:
    request, _ = REQUESTS[name]
    try:
        getattr(stub(fleet, access), name)(request(), timeout=10)
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()


@pytest.mark.parametrize("name", MUTATING)
def test_every_mutating_call_leaves_a_row(fleet, name):
    access = FLEET_CONTROL_ACCESS[name].minimum
    before = len(rows(fleet, name))
    code = make_call(fleet, access, name)
    assert code != grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented"
    entries = rows(fleet, name)
    assert len(entries) == before + 1
    entry = entries[-1]
    assert (entry.token_name, entry.role) == (f"{access.label}-bob", access.label)
    assert entry.target == REQUESTS[name][1]
    assert entry.ok == (code == grpc.StatusCode.OK)
    assert entry.ok or entry.error.startswith(code.name), entry.error
    assert entry.time.seconds > 0 and len(entry.token_id) == 12
    json.loads(entry.parameters)
    assert SECRET not in entry.parameters


@pytest.mark.parametrize("name", MUTATING)
def test_a_refused_call_leaves_a_row(fleet, name):
    before = len(rows(fleet, name))
    assert make_call(fleet, Access.VIEWER, name) == grpc.StatusCode.PERMISSION_DENIED
    entry = rows(fleet, name)[-1]
    assert len(rows(fleet, name)) == before + 1
    assert (entry.token_name, entry.role, entry.ok) == ("viewer-bob", "viewer", False)
    assert entry.error.startswith("PERMISSION_DENIED: ") and "role" in entry.error


def test_parameters_keep_the_request_without_secrets_or_bytes(fleet):
    make_call(fleet, Access.OPERATOR, "UploadArtifact")
    upload = rows(fleet, "UploadArtifact")[-1]
    parameters = json.loads(upload.parameters)
    assert parameters["manifest"]["name"] == "audited" and parameters["messages"] == 3
    assert "chunk" not in upload.parameters and upload.ok
    make_call(fleet, Access.OPERATOR, "SetDesiredConfig")
    config = json.loads(rows(fleet, "SetDesiredConfig")[-1].parameters)
    assert config["document"] == {"detect_interval": 2, "mqtt": {"password": "<redacted>"}}


def test_reads_and_unknown_tokens_are_not_recorded(fleet):
    before = stub(fleet, Access.ADMIN).ListAudit(fleet_pb2.ListAuditRequest(), timeout=5).entries
    viewer = stub(fleet, Access.VIEWER)
    viewer.ListDevices(fleet_pb2.ListDevicesRequest(), timeout=5)
    viewer.ListObjects(fleet_pb2.ListObjectsRequest(), timeout=5)
    viewer.CountObjects(fleet_pb2.CountObjectsRequest(group_by=["label:site"]), timeout=5)
    with pytest.raises(grpc.RpcError):  # asks a device for a picture: changes nothing, so no row either
        viewer.GetFrame(fleet_pb2.GetFrameRequest(device_id="no-such-device"), timeout=5)
    control = fleet_pb2_grpc.FleetControlStub(open_channel(fleet.address, token="efo_nobody"))
    with pytest.raises(grpc.RpcError):
        control.SendCommand(REQUESTS["SendCommand"][0](), timeout=5)
    after = stub(fleet, Access.ADMIN).ListAudit(fleet_pb2.ListAuditRequest(), timeout=5).entries
    assert [e.id for e in after][-1] == [e.id for e in before][-1]


def test_a_successful_change_is_recorded_and_announced_to_fleet_watchers(fleet):
    with grpc.insecure_channel(fleet.address) as channel:
        device = enroll(channel, hardware_id="hw-audit")
    messages: list[str] = []
    watch = stub(fleet, Access.VIEWER).WatchFleet(fleet_pb2.WatchFleetRequest())

    def read() -> None:
        try:
            messages.extend(e.message for e in watch if e.message)
        except grpc.RpcError:
            pass  # cancelled at the end of the test

    threading.Thread(target=read, daemon=True).start()
    try:
        wait_for(lambda: stub(fleet, Access.VIEWER).ListDevices(fleet_pb2.ListDevicesRequest(), timeout=5), 5)
        request = fleet_pb2.SetDeviceLabelsRequest(device_id=device.device_id, set={"site": "lab"})
        stub(fleet, Access.OPERATOR).SetDeviceLabels(request, timeout=5)
        entry = rows(fleet, "SetDeviceLabels")[-1]
        assert entry.ok and entry.target == device.device_id and entry.error == ""
        assert json.loads(entry.parameters)["set"] == {"site": "lab"}
        want = f"audit: operator-bob (operator) SetDeviceLabels {device.device_id}: ok"
        wait_for(lambda: want in messages, 10, what="the audit event on WatchFleet")
    finally:
        watch.cancel()


def test_list_audit_since_and_limit(fleet):
    control = stub(fleet, Access.ADMIN)
    make_call(fleet, Access.OPERATOR, "PauseRollout")
    newest = control.ListAudit(fleet_pb2.ListAuditRequest(limit=1), timeout=5).entries
    assert len(newest) == 1 and newest[0].call == "PauseRollout"
    later = fleet_pb2.ListAuditRequest(since=newest[0].time)
    assert [e.id for e in control.ListAudit(later, timeout=5).entries] == [newest[0].id]
    with pytest.raises(grpc.RpcError) as err:
        control.ListAudit(fleet_pb2.ListAuditRequest(limit=10_001), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_listing_too_big_for_one_answer_keeps_the_newest_and_counts_the_rest(tmp_path):
    ctl = ControllerThread(tmp_path / "fleet.db")
    try:
        token = ctl.controller.store.create_operator_token("admin-ann", Access.ADMIN)
        big = json.dumps({"truncated": "x" * 16_000})
        for i in range(300):  # 300 rows of 16 kB: more than one 4 MiB answer holds
            ctl.controller.store.add_audit(AuditRecord(time=1000.0 + i, token_id="t", token_name="ann",
                                                       role="admin", call="SetDeviceLabels", target=f"dev-{i}",
                                                       parameters=big, ok=True))
        control = fleet_pb2_grpc.FleetControlStub(open_channel(ctl.address, token=token))
        answer = control.ListAudit(fleet_pb2.ListAuditRequest(limit=1000), timeout=10)
        assert 0 < len(answer.entries) < 300
        assert answer.omitted == 300 - len(answer.entries)
        assert answer.entries[-1].target == "dev-299"  # the newest stays; the oldest are left out
        assert [e.target for e in answer.entries] == [f"dev-{i}" for i in range(answer.omitted, 300)]
    finally:
        ctl.stop()
