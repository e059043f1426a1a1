"""The operator CLI as a user meets it: environment variables, JSON, pipes, time and label filters,
--follow, the audit command and databases that are not created by accident. Real processes, real controller."""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from edgefleet.fleet.auth import Access
from edgefleet.fleet.channel import open_channel
from edgefleet.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, fleet_pb2_grpc, types_pb2

from ..conftest import ROOT, ControllerThread, run_cli
from .test_gateway import auth, enroll

pytestmark = pytest.mark.slow  # each command is a process of its own

HOUR = 3600.0
NOW = time.time()


def frame(sequence: int, captured: float, *labels: str) -> types_pb2.FrameDetections:
    when = Timestamp()
    when.FromNanoseconds(int(captured * 1e9))
    return types_pb2.FrameDetections(
        stream_id="cam0", sequence=sequence, frame_index=sequence, capture_time=when,
        detections=[types_pb2.Detection(track_id=i + 1, class_id=0 if label == "person" else 2, label=label,
                                        score=0.5, box=types_pb2.Box(x1=1, y1=2, x2=30, y2=40))
                    for i, label in enumerate(labels)])


def publish(channel, token: str, frames: list[types_pb2.FrameDetections]) -> None:
    stub = agent_pb2_grpc.AgentGatewayStub(channel)
    list(stub.PublishDetections(iter([agent_pb2.DetectionBatch(frames=frames)]), metadata=auth(token), timeout=10))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Two devices, `lab` labelled site=lab: lab's frames 1 (2 h ago, person), 2 (30 min ago, car),
    3 (now, person and car); yard's frame 1 (now, person)."""
    ctl = ControllerThread(tmp_path_factory.mktemp("ergonomics") / "fleet.db")
    with grpc.insecure_channel(ctl.address) as channel:
        lab, yard = enroll(channel, hardware_id="hw-lab"), enroll(channel, hardware_id="hw-yard")
        publish(channel, lab.device_token, [frame(1, NOW - 2 * HOUR, "person"), frame(2, NOW - HOUR / 2, "car"),
                                            frame(3, NOW, "person", "car")])
        publish(channel, yard.device_token, [frame(1, NOW, "person")])
    with open_channel(ctl.address, token=ctl.operator_token) as channel:
        fleet_pb2_grpc.FleetControlStub(channel).SetDeviceLabels(
            fleet_pb2.SetDeviceLabelsRequest(device_id=lab.device_id, set={"site": "lab"}), timeout=5)
    ctl.lab, ctl.yard = lab, yard
    ctl.env = {"EDGEFLEET_CONTROLLER": ctl.address, "EDGEFLEET_TOKEN": ctl.operator_token}
    yield ctl
    ctl.stop()


def cli(fleet, *args: str) -> subprocess.CompletedProcess:
    return run_cli("edgefleet.fleet.cli", *args, env=fleet.env)


def test_the_environment_names_the_controller_and_the_token(fleet):
    proc = cli(fleet, "devices")
    assert proc.returncode == 0, proc.stderr
    assert fleet.lab.device_id in proc.stdout and fleet.yard.device_id in proc.stdout
    assert "EDGEFLEET_CONTROLLER" in cli(fleet, "devices", "--help").stdout


def test_json_has_every_field_and_numbers_as_numbers(fleet):
    proc = cli(fleet, "detections", "--device", fleet.lab.device_id, "--json")
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert listed["total"] == 3
    assert [f["sequence"] for f in listed["frames"]] == [1, 2, 3]
    person = listed["frames"][0]["detections"][0]
    assert person["class_id"] == 0 and person["track_id"] == 1 and person["predicted"] is False
    (device,) = [d for d in json.loads(cli(fleet, "devices", "--json").stdout) if d["device_id"] == fleet.lab.device_id]
    assert device["detections_stored"] == 3 and device["acked_sequence"] == 3


@pytest.mark.parametrize(("flags", "want"), [
    (["--since", "1h"], {("lab", 2), ("lab", 3), ("yard", 1)}),
    (["--since", "3h", "--until", "1h"], {("lab", 1)}),
    (["--label", "car"], {("lab", 2), ("lab", 3)}),
    (["--select", "site=lab", "--label", "person"], {("lab", 1), ("lab", 3)}),
    (["--select", "!site"], {("yard", 1)}),
])
def test_detections_by_time_label_and_selector(fleet, flags, want):
    proc = cli(fleet, "detections", "--format", "csv", *flags)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    names = {fleet.lab.device_id: "lab", fleet.yard.device_id: "yard"}
    assert {(names[r["device_id"]], int(r["sequence"])) for r in rows} == want
    if "--label" in flags:
        assert {r["label"] for r in rows} == {flags[flags.index("--label") + 1]}


def test_iso_times_and_bad_times(fleet):
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(NOW - 2.5 * HOUR))
    until = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(NOW - 1.5 * HOUR))
    proc = cli(fleet, "detections", "--device", fleet.lab.device_id, "--since", since, "--until", until, "--json")
    assert [f["sequence"] for f in json.loads(proc.stdout)["frames"]] == [1]
    bad = cli(fleet, "detections", "--since", "yesterday")
    assert bad.returncode == 2 and "neither a duration" in bad.stderr
    bad = cli(fleet, "detections", "--select", "site in (a")
    assert bad.returncode == 2 and "INVALID_ARGUMENT" in bad.stderr and "Traceback" not in bad.stderr


def test_follow_prints_the_stored_ones_then_each_new_frame(fleet):
    args = [sys.executable, "-m", "edgefleet.fleet.cli", "detections", "--select", "site=lab", "--follow",
            "--format", "json"]
    proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **fleet.env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        stored = [json.loads(proc.stdout.readline())["sequence"] for _ in range(3)]
        assert stored == [1, 2, 3]
        with grpc.insecure_channel(fleet.address) as channel:
            for sequence in (4, 5):  # until the watch is surely open, the listing may hold 4; 5 comes live
                publish(channel, fleet.lab.device_token, [frame(sequence, time.time(), "dog")])
                publish(channel, fleet.yard.device_token, [frame(sequence, time.time(), "dog")])  # not selected
                time.sleep(0.5)
        live = [json.loads(proc.stdout.readline()) for _ in range(2)]
        assert [(f["device_id"], f["sequence"]) for f in live] == [(fleet.lab.device_id, 4), (fleet.lab.device_id, 5)]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


def test_output_into_a_closed_pipe_ends_quietly(fleet, tmp_path):
    with grpc.insecure_channel(fleet.address) as channel:
        device = enroll(channel, hardware_id="hw-many")
        for start in range(1, 4001, 500):
            publish(channel, device.device_token, [frame(s, NOW, "person") for s in range(start, start + 500)])
    command = (f"set -o pipefail; {sys.executable} -m edgefleet.fleet.cli detections --device {device.device_id}"
               " --limit 4000 | head -1")
    proc = subprocess.run(["bash", "-c", command], cwd=ROOT, env={**os.environ, **fleet.env}, capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.startswith("seq      1")
    assert proc.stderr == ""
    assert proc.returncode in (0, 141)


def test_audit_lists_who_changed_what(fleet):
    proc = cli(fleet, "audit", "--since", "1h", "--json")
    assert proc.returncode == 0, proc.stderr
    (labels,) = [e for e in json.loads(proc.stdout) if e["call"] == "SetDeviceLabels"]
    assert labels["target"] == fleet.lab.device_id and labels["ok"] is True and labels["role"] == "admin"
    assert isinstance(labels["id"], int)
    table = cli(fleet, "audit")
    assert "SetDeviceLabels" in table.stdout and "TARGET" in table.stdout
    operator = fleet.controller.store.create_operator_token("carol", Access.OPERATOR)
    refused = run_cli("edgefleet.fleet.cli", "audit", env={**fleet.env, "EDGEFLEET_TOKEN": operator})
    assert refused.returncode == 2 and "ListAudit needs the admin role" in refused.stderr


def test_secret_commands_do_not_create_a_database(tmp_path):
    missing = tmp_path / "nowhere" / "fleet.db"
    for args in (["enroll-key", "revoke", "abc"], ["enroll-key", "list"], ["operator-token", "create"]):
        proc = run_cli("edgefleet.fleet.cli", *args, "--db", str(missing))
        assert proc.returncode == 2, args
        assert f"no controller database at {missing}" in proc.stderr and "--create" in proc.stderr
    assert not missing.parent.exists()
    made = run_cli("edgefleet.fleet.cli", "enroll-key", "create", "--db", str(missing), "--create")
    assert made.returncode == 0 and made.stdout.startswith("efk_") and missing.exists()
    listed = run_cli("edgefleet.fleet.cli", "enroll-key", "list", "--db", str(missing), "--json")
    assert len(json.loads(listed.stdout)) == 1



def test_tui_with_a_refused_token_exits_with_the_reason(fleet):
    proc = run_cli("edgefleet.fleet.cli", "tui", env={**fleet.env, "EDGEFLEET_TOKEN": "efo_not-a-token"}, timeout=60)
    assert proc.returncode == 2
    assert f"the controller at {fleet.address} refused the operator token: UNAUTHENTICATED" in proc.stderr


@pytest.fixture(scope="module")
def tls_fleet(tmp_path_factory):
    """A TLS controller, a mutual-TLS one and a plaintext one, with the test PKI (tests/integration/test_tls.py)."""
    from edgefleet.fleet.tls import ServerTLS

    from .test_tls import Pki

    root = tmp_path_factory.mktemp("tls-mismatch")
    pki = Pki(root)
    server = (pki.cert("server"), pki.key("server"))
    controllers = {"tls": ControllerThread(root / "tls.db", tls=ServerTLS(*server)),
                   "mtls": ControllerThread(root / "mtls.db", tls=ServerTLS(*server, pki.cert("ca"))),
                   "plain": ControllerThread(root / "plain.db")}
    yield pki, controllers
    for ctl in controllers.values():
        ctl.stop()


@pytest.mark.parametrize(("server", "client", "says"), [
    ("plain", ["--tls-ca", "ca"], "the controller does not speak TLS (it serves plaintext)"),
    ("tls", ["--tls-ca", "other-ca"], "the controller's certificate is not signed by the CA in {other-ca}"),
    ("tls", [], "it may serve TLS; pass --tls-ca"),
    ("mtls", ["--tls-ca", "ca"], "it may require mutual TLS and refuse no client certificate"),
    ("mtls", ["--tls-ca", "ca", "--tls-cert", "rogue-client", "--tls-key", "rogue-client"],
     "refuse the client certificate {rogue-client}"),
])
def test_a_tls_mismatch_says_what_is_wrong(tls_fleet, server, client, says):
    pki, controllers = tls_fleet
    ctl = controllers[server]
    flags: list[str] = []
    for flag, name in zip(client[::2], client[1::2]):
        flags += [flag, str(pki.key(name) if flag == "--tls-key" else pki.cert(name))]
    proc = run_cli("edgefleet.fleet.cli", "devices", "--controller", ctl.address, "--token", ctl.operator_token,
                   "--timeout", "5", *flags)
    assert proc.returncode == 2
    for name in ("other-ca", "rogue-client"):
        says = says.replace("{" + name + "}", str(pki.cert(name)))
    assert f"cannot reach the controller at {ctl.address}: " in proc.stderr
    assert says in proc.stderr, proc.stderr
    assert "Socket closed" not in proc.stderr and "Traceback" not in proc.stderr
