"""The operator CLI and the demo, as a user runs them."""
from __future__ import annotations

import json

import pytest

from edgefleet.v1 import agent_pb2_grpc

from ..conftest import free_port, run_cli, samples_dir
from .test_gateway import auth, batch, enroll

pytestmark = pytest.mark.slow  # each command is a process of its own


def test_devices_and_detections_read_over_fleet_control(controller, channel):
    device = enroll(channel)
    stub = agent_pb2_grpc.AgentGatewayStub(channel)
    list(stub.PublishDetections(iter([batch(1, 2, 3)]), metadata=auth(device.device_token), timeout=5))

    token = ("--token", controller.operator_token)
    proc = run_cli("edgefleet.fleet.cli", "devices", "--controller", controller.address, *token, "--json")
    assert proc.returncode == 0, proc.stderr
    (listed,) = json.loads(proc.stdout)
    assert listed["device_id"] == device.device_id
    assert listed["detections_stored"] == 3  # a number, though proto JSON writes uint64 as a string

    proc = run_cli("edgefleet.fleet.cli", "devices", "--controller", controller.address,
                   env={"EDGEFLEET_TOKEN": controller.operator_token})
    assert device.device_id in proc.stdout and "DEVICE" in proc.stdout

    proc = run_cli("edgefleet.fleet.cli", "detections", "--controller", controller.address, *token,
                   "--device", device.device_id, "--limit", "2")
    assert proc.returncode == 0, proc.stderr
    assert "seq      2" in proc.stdout and "seq      3" in proc.stdout and "person#1" in proc.stdout
    assert "(2 of 3 stored records)" in proc.stdout


def test_unknown_device_and_unreachable_controller_are_clear_errors(controller):
    token = ("--token", controller.operator_token)
    proc = run_cli("edgefleet.fleet.cli", "detections", "--controller", controller.address, *token, "--device", "nope")
    assert proc.returncode == 2
    assert "NOT_FOUND" in proc.stderr and "nope" in proc.stderr and "Traceback" not in proc.stderr

    proc = run_cli("edgefleet.fleet.cli", "devices", "--controller", f"127.0.0.1:{free_port()}", *token,
                   "--timeout", "1")
    assert proc.returncode == 2
    assert "cannot reach the controller" in proc.stderr and "Traceback" not in proc.stderr


def test_enroll_key_create_then_serve_accepts_it(tmp_path):
    db = tmp_path / "fleet.db"
    proc = run_cli("edgefleet.fleet.cli", "enroll-key", "create", "--db", str(db), "--name", "lab",
                   "--create")
    assert proc.returncode == 0, proc.stderr
    key = proc.stdout.strip()
    assert key.startswith("efk_") and len(key) > 20
    from edgefleet.fleet.store import FleetStore

    store = FleetStore(db)
    try:
        device, token = store.enroll(key, "hw", "cam", "v", {}, {})
        assert store.principal_for_token(token).subject == device.device_id
    finally:
        store.close()


@pytest.mark.data  # the sample videos and the bundled model
def test_demo_runs_agents_and_ends_with_a_summary(tmp_path):
    proc = run_cli("edgefleet.fleet.cli", "demo", "--duration", "12", "--agents", "2", "--samples", str(samples_dir()),
                   "--workdir", str(tmp_path / "demo"), timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "demo-cam1" in proc.stdout and "demo-cam2" in proc.stdout
    assert proc.stdout.count("registered as") == 2
    assert "person" in proc.stdout
    assert "demo: ok" in proc.stdout
