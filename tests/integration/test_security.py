"""Who may call what: enrollment keys, device and operator tokens, roles, against a real controller."""
from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import message_factory

from edgefleet.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, fleet_pb2_grpc

from ..conftest import ControllerThread, run_cli
from .test_gateway import auth, batch, enroll

GATEWAY = agent_pb2.DESCRIPTOR.services_by_name["AgentGateway"]
CONTROL = fleet_pb2.DESCRIPTOR.services_by_name["FleetControl"]
# Every method that needs a token: all of FleetControl, all of AgentGateway but Enroll.
GUARDED = [(GATEWAY, m) for m in GATEWAY.methods if m.name != "Enroll"] + [(CONTROL, m) for m in CONTROL.methods]
ROLE_OF = {GATEWAY.full_name: "device", CONTROL.full_name: "operator"}
CREDENTIALS = ["none", "garbage", "revoked device", "revoked operator", "device", "operator"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """One controller for the whole matrix, with a valid and a revoked token of each role."""
    ctl = ControllerThread(tmp_path_factory.mktemp("security") / "fleet.db")
    with grpc.insecure_channel(ctl.address) as channel:
        revoked_device = enroll(channel, hardware_id="hw-rotated").device_token
        enroll(channel, hardware_id="hw-rotated")  # re-enrolling rotates the token: the old one is revoked
        device = enroll(channel, hardware_id="hw-1")
    revoked_operator = ctl.controller.store.create_operator_token("gone")
    ctl.controller.store.revoke_operator_token(revoked_operator)
    ctl.tokens = {
        "none": None, "garbage": "efo_not-a-token", "revoked device": revoked_device,
        "revoked operator": revoked_operator, "device": device.device_token, "operator": ctl.operator_token,
    }
    yield ctl
    ctl.stop()


def call_raw(channel, service, method, token: str | None, timeout: float):
    """Call any method with an empty request, whatever its shape; raises grpc.RpcError."""
    request = message_factory.GetMessageClass(method.input_type)()
    shape = f"{'stream' if method.client_streaming else 'unary'}_{'stream' if method.server_streaming else 'unary'}"
    multicallable = getattr(channel, shape)(
        f"/{service.full_name}/{method.name}", request_serializer=lambda m: m.SerializeToString()
    )
    metadata = auth(token) if token else ()
    result = multicallable(iter([request]) if method.client_streaming else request, metadata=metadata,
                           timeout=timeout)
    if method.server_streaming:
        list(result)


def expected(service, credential: str) -> grpc.StatusCode | None:
    """The refusal the controller must answer with; None where the call is let through."""
    if credential == ROLE_OF[service.full_name]:
        return None
    if credential in ("device", "operator"):
        return grpc.StatusCode.PERMISSION_DENIED
    return grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("credential", CREDENTIALS)
@pytest.mark.parametrize(("service", "method"), GUARDED, ids=[f"{s.name}.{m.name}" for s, m in GUARDED])
def test_bad_token_matrix(fleet, service, method, credential):
    want = expected(service, credential)
    with grpc.insecure_channel(fleet.address) as channel:
        try:
            # Let-through calls of live streams (WatchFleet, ...) just run into the deadline.
            call_raw(channel, service, method, fleet.tokens[credential], timeout=5 if want else 0.5)
            code = grpc.StatusCode.OK
        except grpc.RpcError as err:
            code = err.code()
    if want is None:
        assert code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
    else:
        assert code == want


def test_refusals_say_what_is_wrong(fleet):
    control = fleet_pb2_grpc.FleetControlStub(grpc.insecure_channel(fleet.address))
    cases = [((), "missing 'authorization: Bearer <operator token>'"),
             (auth(fleet.tokens["revoked operator"]), "unknown or revoked token"),
             (auth(fleet.tokens["device"]), "a device token cannot call edgefleet.v1.FleetControl")]
    for metadata, says in cases:
        with pytest.raises(grpc.RpcError) as err:
            control.ListDevices(fleet_pb2.ListDevicesRequest(), metadata=metadata, timeout=5)
        assert says in err.value.details()


def test_a_device_cannot_publish_as_another_device(channel, control):
    mine, other = enroll(channel, hardware_id="hw-a"), enroll(channel, hardware_id="hw-b")
    forged = batch(1)
    forged.frames[0].device_id = other.device_id
    stub = agent_pb2_grpc.AgentGatewayStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.PublishDetections(iter([forged]), metadata=auth(mine.device_token), timeout=5))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    for device in (mine, other):
        got = control.GetDevice(fleet_pb2.GetDeviceRequest(device_id=device.device_id), timeout=5)
        assert got.detections_stored == 0
    # Naming itself is fine: the controller fills the id in anyway.
    honest = batch(1)
    honest.frames[0].device_id = mine.device_id
    (ack,) = stub.PublishDetections(iter([honest]), metadata=auth(mine.device_token), timeout=5)
    assert ack.acked_sequence == 1


@pytest.mark.slow
def test_enroll_key_create_list_revoke_with_the_cli_while_serving(tmp_path):
    db = tmp_path / "fleet.db"
    ctl = ControllerThread(db, enroll_keys=())
    try:
        proc = run_cli("edgefleet.fleet.cli", "enroll-key", "create", "--db", str(db), "--name", "lab")
        assert proc.returncode == 0, proc.stderr
        key = proc.stdout.strip()
        with grpc.insecure_channel(ctl.address) as channel:
            assert enroll(channel, key=key, hardware_id="hw-1").device_id

            listed = run_cli("edgefleet.fleet.cli", "enroll-key", "list", "--db", str(db), "--json")
            (entry,) = [k for k in json.loads(listed.stdout) if k["name"] == "lab"]
            assert entry["revoked"] is False and key not in listed.stdout
            proc = run_cli("edgefleet.fleet.cli", "enroll-key", "revoke", entry["id"], "--db", str(db))
            assert proc.returncode == 0, proc.stderr
            assert f"revoked enrollment key {entry['id']} (lab)" in proc.stdout

            with pytest.raises(grpc.RpcError) as err:
                enroll(channel, key=key, hardware_id="hw-2")
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "unknown or revoked enrollment key" in err.value.details()
        assert "revoked" in run_cli("edgefleet.fleet.cli", "enroll-key", "list", "--db", str(db)).stdout

        proc = run_cli("edgefleet.fleet.cli", "enroll-key", "revoke", "nope", "--db", str(db))
        assert proc.returncode == 2 and "no enrollment key with id 'nope'" in proc.stderr
    finally:
        ctl.stop()


@pytest.mark.slow
def test_operator_token_from_the_cli_works_until_revoked(tmp_path):
    db = tmp_path / "fleet.db"
    ctl = ControllerThread(db)
    try:
        proc = run_cli("edgefleet.fleet.cli", "operator-token", "create", "--db", str(db), "--name", "alice")
        assert proc.returncode == 0, proc.stderr
        token = proc.stdout.strip()
        assert token.startswith("efo_") and "only its hash is kept" in proc.stderr

        devices = ("edgefleet.fleet.cli", "devices", "--controller", ctl.address)
        assert run_cli(*devices, env={"EDGEFLEET_TOKEN": token}).returncode == 0

        proc = run_cli(*devices, env={"EDGEFLEET_TOKEN": ""})
        assert proc.returncode == 2 and "no operator token" in proc.stderr

        assert run_cli("edgefleet.fleet.cli", "operator-token", "revoke", token, "--db", str(db)).returncode == 0
        proc = run_cli(*devices, "--token", token)
        assert proc.returncode == 2
        assert "UNAUTHENTICATED" in proc.stderr and "Traceback" not in proc.stderr
    finally:
        ctl.stop()


def test_health_reflection_and_enroll_need_no_token_and_ignore_a_bad_one(channel):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), metadata=auth("efo_garbage"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = agent_pb2_grpc.AgentGatewayStub(channel)
    reply = stub.Enroll(agent_pb2.EnrollRequest(enroll_key="efk_test", hardware_id="hw-x"),
                        metadata=auth("efo_garbage"), timeout=5)
    assert reply.device_token.startswith("efd_")
