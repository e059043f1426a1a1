"""The controller's half of rollouts over real gRPC: artifacts in, signed; waves out, gated on the
devices' reports. The devices here are scripted Sessions (plumbing); tests/integration/
test_rollout_e2e.py runs the same against real agent processes."""
from __future__ import annotations

import hashlib
import queue
import threading
import time

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefleet.fleet.rollouts import plan_waves
from edgefleet.fleet.signing import signed_bytes
from edgefleet.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, types_pb2
from tests.conftest import ControllerThread, wait_for

CPU = types_pb2.HardwareProfile(platform="x86_64-cpu", onnxruntime_providers=["CPUExecutionProvider"])
JETSON = types_pb2.HardwareProfile(platform="jetson-orin-nano", tensorrt_version="10.3.0",
                                   gpu_compute_capability="8.7", onnxruntime_providers=["CPUExecutionProvider"])
State = types_pb2.DeploymentStatus


class ScriptedDevice:
    """An enrolled device with an open Session: collects the commands it gets, sends what the test says."""

    def __init__(self, channel, name: str, profile=CPU, labels: dict | None = None, key: str = "efk_test"):
        stub = agent_pb2_grpc.AgentGatewayStub(channel)
        self.enrolled = stub.Enroll(agent_pb2.EnrollRequest(
            enroll_key=key, hardware_id=f"hw-{name}", hostname=name, profile=profile, labels=labels or {}),
            timeout=5)
        self.id = self.enrolled.device_id
        self.metadata = (("authorization", f"Bearer {self.enrolled.device_token}"),)
        self.stub = stub
        self.profile = profile
        self.labels = labels or {}  # a real agent reports its labels at enroll and in every Hello
        self.commands: list[agent_pb2.Command] = []
        self._up: queue.Queue = queue.Queue()
        self.call = None
        self.connect()

    def connect(self) -> None:
        self._up = queue.Queue()
        self._up.put(agent_pb2.AgentMessage(hello=agent_pb2.Hello(agent_version="t", profile=self.profile,
                                                                        labels=self.labels)))
        self.call = self.stub.Session(iter(self._up.get, None), metadata=self.metadata)
        threading.Thread(target=self._read, args=(self.call,), daemon=True).start()
        wait_for(lambda: self.accepted, 10, f"{self.id} accepted")

    accepted = False

    def _read(self, call) -> None:
        try:
            for message in call:
                if message.WhichOneof("body") == "accepted":
                    self.accepted = True
                else:
                    self.commands.append(message.command)
        except grpc.RpcError:
            pass

    def disconnect(self) -> None:
        self._up.put(None)
        self.accepted = False

    def deploys(self) -> list[agent_pb2.DeployArtifact]:
        return [c.deploy for c in self.commands if c.WhichOneof("action") == "deploy"]

    def report(self, rollout_id: str, sha: str, state: int, reason: str = "") -> None:
        self._up.put(agent_pb2.AgentMessage(deployment=types_pb2.DeploymentStatus(
            rollout_id=rollout_id, artifact_sha256=sha, state=state, reason=reason)))


@pytest.fixture
def model_bytes(tmp_path):
    return bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit: several chunks


def push(control, data: bytes, fmt: str = "onnx", **manifest) -> types_pb2.Artifact:
    def messages():
        yield fleet_pb2.UploadArtifactRequest(manifest=types_pb2.ArtifactManifest(name="m", format=fmt, **manifest))
        for i in range(0, len(data), 300_000):
            yield fleet_pb2.UploadArtifactRequest(chunk=data[i:i + 300_000])
    return control.UploadArtifact(messages(), timeout=10)


def fetch_all(device: ScriptedDevice, sha: str, offset: int = 0, chunk_size: int = 0) -> tuple[bytes, list[int]]:
    data, offsets = b"", []
    for chunk in device.stub.FetchArtifact(agent_pb2.FetchArtifactRequest(sha256=sha, offset=offset,
                                                                          chunk_size=chunk_size),
                                           metadata=device.metadata, timeout=10):
        offsets.append(chunk.offset)
        data += chunk.data
    return data, offsets


def test_waves_split_the_targets_cumulatively():
    ids = [f"d{i}" for i in range(10)]
    assert [len(w) for w in plan_waves(ids, 1, (10, 50, 100))] == [1, 4, 5]
    assert [len(w) for w in plan_waves(ids[:3], 1, (100,))] == [1, 2]
    assert [len(w) for w in plan_waves(ids[:1], 2, (50, 100))] == [1]
    assert sum(plan_waves(ids, 3, (30, 60, 100)), []) == ids


def test_upload_stores_signs_and_serves_chunks_from_any_offset(controller, channel, control, model_bytes):
    artifact = push(control, model_bytes)
    sha = hashlib.sha256(model_bytes).hexdigest()
    assert (artifact.manifest.sha256, artifact.manifest.size_bytes) == (sha, len(model_bytes))
    device = ScriptedDevice(channel, "cam-a")
    Ed25519PublicKey.from_public_bytes(device.enrolled.controller_public_key).verify(
        artifact.signature, signed_bytes(artifact.manifest))  # raises if the signature is wrong
    assert [a.manifest.sha256 for a in control.ListArtifacts(fleet_pb2.ListArtifactsRequest()).artifacts] == [sha]
    # a device may fetch only what a rollout sent it
    with pytest.raises(grpc.RpcError) as err:
        fetch_all(device, sha)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    control.CreateRollout(fleet_pb2.CreateRolloutRequest(artifact_sha256=sha), timeout=5)
    data, offsets = fetch_all(device, sha, chunk_size=256 << 10)
    assert data == model_bytes and offsets[:3] == [0, 256 << 10, 512 << 10]
    tail, offsets = fetch_all(device, sha, offset=1_000_000)  # resume
    assert tail == model_bytes[1_000_000:] and offsets[0] == 1_000_000
    with pytest.raises(grpc.RpcError) as err:
        fetch_all(device, sha, offset=len(model_bytes) + 1)
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE


@pytest.mark.parametrize("manifest, why", [
    (dict(sha256="0" * 64), "sha256"),
    (dict(size_bytes=5), "size_bytes"),
])
def test_an_upload_that_differs_from_its_manifest_is_refused(control, model_bytes, manifest, why):
    with pytest.raises(grpc.RpcError) as err:
        push(control, model_bytes, **manifest)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and why in err.value.details()
    assert not control.ListArtifacts(fleet_pb2.ListArtifactsRequest()).artifacts


def test_a_good_rollout_goes_through_canary_and_waves_and_skips_incompatible_devices(
        channel, control, model_bytes):
    sha = push(control, model_bytes, fmt="tensorrt-engine", tensorrt_version="10.3.1",
               gpu_compute_capability="8.7").manifest.sha256
    jetsons = [ScriptedDevice(channel, f"jetson-{i}", JETSON, {"site": "lab"}) for i in range(4)]
    cpu = ScriptedDevice(channel, "cpu-box", CPU, {"site": "lab"})
    elsewhere = ScriptedDevice(channel, "jetson-far", JETSON, {"site": "far"})
    rollout = control.CreateRollout(fleet_pb2.CreateRolloutRequest(
        artifact_sha256=sha, selector={"site": "lab"}, canary=1, waves_percent=[50, 100]), timeout=5)
    assert [(w.target, w.state) for w in rollout.waves] == [(1, fleet_pb2.RUNNING), (1, fleet_pb2.PENDING),
                                                            (2, fleet_pb2.PENDING)]
    skipped = {d.device_id: d.reason for d in rollout.devices if d.reason.startswith("skipped")}
    assert list(skipped) == [cpu.id] and "TensorRT" in skipped[cpu.id]
    assert elsewhere.id not in {d.device_id for d in rollout.devices}
    rid = rollout.rollout_id

    def wave_of(device):
        return next(d.wave for d in control.GetRollout(fleet_pb2.GetRolloutRequest(rollout_id=rid)).devices
                    if d.device_id == device.id)

    for wave in range(3):
        members = [d for d in jetsons if wave_of(d) == wave]
        for device in members:
            deploy = wait_for(device.deploys, 10, f"deploy to {device.id}")[0]
            assert deploy.rollout_id == rid and deploy.artifact.manifest.sha256 == sha
            assert deploy.gate_min_agreement == pytest.approx(0.8)
        waiting = [d for d in jetsons if wave_of(d) > wave]
        assert not any(d.deploys() for d in waiting)  # the next wave waits for this one's verdicts
        for device in members:
            device.report(rid, sha, State.DOWNLOADING)
            device.report(rid, sha, State.ACTIVE)
    done = wait_for(lambda: (r := control.GetRollout(fleet_pb2.GetRolloutRequest(rollout_id=rid))).state
                    == fleet_pb2.SUCCEEDED and r, 10, "the rollout to succeed")
    assert [w.succeeded for w in done.waves] == [1, 1, 2]
    assert not cpu.deploys()


def test_a_failed_canary_halts_the_rollout_with_its_reason(channel, control, model_bytes):
    sha = push(control, model_bytes).manifest.sha256
    devices = [ScriptedDevice(channel, f"cam-{i}") for i in range(3)]
    rollout = control.CreateRollout(fleet_pb2.CreateRolloutRequest(artifact_sha256=sha, canary=1), timeout=5)
    canary = next(d for d in devices if d.id == rollout.devices[0].device_id)
    wait_for(canary.deploys, 10, "the canary's deploy")
    canary.report(rollout.rollout_id, sha, State.FAILED, "gate: fps ratio 0.41 < 0.90")
    failed = wait_for(lambda: (r := control.GetRollout(fleet_pb2.GetRolloutRequest(
        rollout_id=rollout.rollout_id))).state == fleet_pb2.FAILED and r, 10, "the rollout to fail")
    assert "canary failed" in failed.reason and "fps ratio 0.41" in failed.reason
    assert [d for d in devices if d is not canary and d.deploys()] == []


def test_pause_holds_the_next_wave_and_resume_starts_it(channel, control, model_bytes):
    sha = push(control, model_bytes).manifest.sha256
    devices = [ScriptedDevice(channel, f"cam-{i}") for i in range(2)]
    rollout = control.CreateRollout(fleet_pb2.CreateRolloutRequest(artifact_sha256=sha), timeout=5)
    rid = rollout.rollout_id
    canary_id, rest_id = rollout.devices[0].device_id, rollout.devices[1].device_id
    canary, rest = (next(d for d in devices if d.id == i) for i in (canary_id, rest_id))
    paused = control.PauseRollout(fleet_pb2.RolloutRef(rollout_id=rid, reason="night shift"), timeout=5)
    assert paused.state == fleet_pb2.PAUSED
    with pytest.raises(grpc.RpcError) as err:
        control.PauseRollout(fleet_pb2.RolloutRef(rollout_id=rid), timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    wait_for(canary.deploys, 10, "the canary's deploy")
    canary.report(rid, sha, State.ACTIVE)
    wait_for(lambda: control.GetRollout(fleet_pb2.GetRolloutRequest(rollout_id=rid)).waves[0].succeeded == 1, 10,
             "the canary's verdict")
    assert not rest.deploys()
    assert control.ResumeRollout(fleet_pb2.RolloutRef(rollout_id=rid), timeout=5).state == fleet_pb2.RUNNING
    wait_for(rest.deploys, 10, "the second wave's deploy after resume")
    aborted = control.AbortRollout(fleet_pb2.RolloutRef(rollout_id=rid, reason="changed my mind"), timeout=5)
    assert aborted.state == fleet_pb2.ABORTED and "changed my mind" in aborted.reason


def test_a_restarted_controller_continues_and_resends_to_devices_that_reconnect(tmp_path, model_bytes):
    ctl = ControllerThread(tmp_path / "fleet.db")
    from edgefleet.fleet.channel import open_channel
    from edgefleet.v1 import fleet_pb2_grpc

    try:
        with grpc.insecure_channel(ctl.address) as channel, \
                open_channel(ctl.address, token=ctl.operator_token) as ops:
            control = fleet_pb2_grpc.FleetControlStub(ops)
            sha = push(control, model_bytes).manifest.sha256
            devices = [ScriptedDevice(channel, f"cam-{i}") for i in range(2)]
            rollout = control.CreateRollout(fleet_pb2.CreateRolloutRequest(artifact_sha256=sha), timeout=5)
            rid = rollout.rollout_id
            canary = next(d for d in devices if d.id == rollout.devices[0].device_id)
            wait_for(canary.deploys, 10, "the canary's deploy")
            canary.report(rid, sha, State.DOWNLOADING)
            wait_for(lambda: control.GetRollout(fleet_pb2.GetRolloutRequest(rollout_id=rid)).devices[0].state
                     == State.DOWNLOADING, 10, "the canary downloading")
    finally:
        ctl.stop()
    ctl = ControllerThread(tmp_path / "fleet.db", enroll_keys=())
    try:
        with grpc.insecure_channel(ctl.address) as channel, \
                open_channel(ctl.address, token=ctl.operator_token) as ops:
            control = fleet_pb2_grpc.FleetControlStub(ops)
            assert control.GetRollout(fleet_pb2.GetRolloutRequest(rollout_id=rid)).state == fleet_pb2.RUNNING
            canary.stub = agent_pb2_grpc.AgentGatewayStub(channel)
            canary.commands.clear()
            canary.connect()
            assert wait_for(canary.deploys, 10, "the deploy re-sent on reconnect")[0].rollout_id == rid
            canary.report(rid, sha, State.ACTIVE)
            wait_for(lambda: control.GetRollout(fleet_pb2.GetRolloutRequest(rollout_id=rid)).waves[0].succeeded,
                     10, "the canary's verdict after the restart")
    finally:
        ctl.stop()


def test_downloads_take_turns_for_the_controllers_fetch_slots(tmp_path):
    """--fetch-streams 1, --fetch-stream-s 0.3: a second download waits while the first sends; the
    first's stream ends cleanly when its turn is over, short of the end, and resumes from there."""
    model_bytes = np.random.default_rng(0).bytes(24 << 20)  # more than gRPC buffers: the first turn blocks
    from edgefleet.fleet.channel import open_channel
    from edgefleet.fleet.rollouts import RolloutOptions
    from edgefleet.v1 import fleet_pb2_grpc

    ctl = ControllerThread(tmp_path / "fleet.db", rollout_options=RolloutOptions(fetch_streams=1, fetch_stream_s=0.3))
    gauge = ctl.controller.metrics.artifact_streams

    def streams() -> dict[str, float]:
        return {dict(s.labels)["state"]: s.value for s in gauge.samples()}

    try:
        with grpc.insecure_channel(ctl.address) as channel, \
                open_channel(ctl.address, token=ctl.operator_token) as ops:
            control = fleet_pb2_grpc.FleetControlStub(ops)
            sha = push(control, model_bytes).manifest.sha256
            first, second = ScriptedDevice(channel, "cam-a"), ScriptedDevice(channel, "cam-b")
            control.CreateRollout(fleet_pb2.CreateRolloutRequest(artifact_sha256=sha), timeout=5)
            turn = first.stub.FetchArtifact(agent_pb2.FetchArtifactRequest(sha256=sha, chunk_size=4096),
                                            metadata=first.metadata, timeout=10)
            received = next(turn).data  # the first device holds the only slot now
            waited: dict = {}

            def download_all() -> None:  # the second device, resuming after each turn as an agent does
                data = b""
                while len(data) < len(model_bytes):
                    chunk_data, _ = fetch_all(second, sha, offset=len(data))
                    waited.setdefault("first_turn", len(chunk_data))
                    data += chunk_data
                waited["data"] = data

            other = threading.Thread(target=download_all)
            other.start()
            wait_for(lambda: streams() == {"active": 1, "waiting": 1}, 10, "the second download waiting")
            time.sleep(0.3)  # the first turn is over: its stream ends at the next chunk it sends
            assert "first_turn" not in waited
            received += b"".join(c.data for c in turn)  # ends cleanly, without an error
            assert 0 < len(received) < len(model_bytes) and model_bytes.startswith(received)
            other.join(30)
            assert waited["data"] == model_bytes
            assert streams() == {"active": 0, "waiting": 0}
    finally:
        ctl.stop()


@pytest.mark.slow  # waits out the rollout's device timeout
def test_a_silent_device_times_out_but_not_while_it_waits_for_a_download_slot(tmp_path):
    """--rollout-device-timeout 1 s, one download slot: a device whose FetchArtifact waits for the
    slot (another of its streams holds it) says nothing for longer than the timeout and stays in
    the wave; once its streams end, the timeout counts from there and fails it."""
    from edgefleet.fleet.channel import open_channel
    from edgefleet.fleet.rollouts import RolloutOptions
    from edgefleet.v1 import fleet_pb2_grpc

    options = RolloutOptions(device_timeout_s=1.0, fetch_streams=1, fetch_stream_s=60)
    ctl = ControllerThread(tmp_path / "fleet.db", rollout_options=options)
    try:
        with grpc.insecure_channel(ctl.address) as channel, \
                open_channel(ctl.address, token=ctl.operator_token) as ops:
            control = fleet_pb2_grpc.FleetControlStub(ops)
            sha = push(control, np.random.default_rng(0).bytes(24 << 20)).manifest.sha256
            device = ScriptedDevice(channel, "cam-a")
            rid = control.CreateRollout(fleet_pb2.CreateRolloutRequest(artifact_sha256=sha), timeout=5).rollout_id

            def state() -> tuple[int, str]:
                d = control.GetRollout(fleet_pb2.GetRolloutRequest(rollout_id=rid), timeout=5).devices[0]
                return d.state, d.reason

            request = agent_pb2.FetchArtifactRequest(sha256=sha, chunk_size=4096)
            holder = device.stub.FetchArtifact(request, metadata=device.metadata, timeout=30)
            next(holder)  # holds the only slot, and stops reading
            waiting = device.stub.FetchArtifact(request, metadata=device.metadata, timeout=30)

            def wait_for_the_slot() -> None:  # no chunk comes before `holder` ends; cancelled here
                with pytest.raises(grpc.RpcError):
                    list(waiting)

            waited = threading.Thread(target=wait_for_the_slot, daemon=True)
            waited.start()
            time.sleep(3.0)  # three checks, two seconds past the timeout
            assert state()[0] != State.FAILED, state()
            holder.cancel()
            waiting.cancel()
            waited.join(5)
            failed = wait_for(lambda: (now := state())[0] == State.FAILED and now, 10, "the timeout")
            assert "no report from the device for 1 s" in failed[1]
    finally:
        ctl.stop()


def test_an_artifact_for_openvino_goes_only_to_devices_that_report_openvino(controller, channel, control,
                                                                              model_bytes):
    """An INT8 ONNX model quantized for OpenVINO (its manifest's labels.runtime)."""
    from tests.conftest import run_cli

    sha = push(control, model_bytes, fmt="onnx", precision="int8",
               labels={"runtime": "openvino", "device": "cpu"}).manifest.sha256
    with_ov = types_pb2.HardwareProfile(platform="x86_64-cpu", onnxruntime_providers=["CPUExecutionProvider"],
                                        extra={"runtimes": "openvino,ncnn", "openvino_devices": "CPU"})
    ncnn_only = types_pb2.HardwareProfile(platform="aarch64-cpu", onnxruntime_providers=["CPUExecutionProvider"],
                                          extra={"runtimes": "ncnn"})
    ov = ScriptedDevice(channel, "ov-box", with_ov, {"site": "lab"})
    plain = ScriptedDevice(channel, "plain-box", CPU, {"site": "lab"})
    pi = ScriptedDevice(channel, "pi-box", ncnn_only, {"site": "lab"})
    rollout = control.CreateRollout(fleet_pb2.CreateRolloutRequest(
        artifact_sha256=sha, selector={"site": "lab"}, canary=1, waves_percent=[100]), timeout=5)
    skipped = {d.device_id: d.reason for d in rollout.devices if d.reason.startswith("skipped")}
    assert skipped == {plain.id: "skipped: no openvino on the device", pi.id: "skipped: no openvino on the device"}
    deploy = wait_for(ov.deploys, 10, "deploy to the OpenVINO device")[0]
    assert deploy.artifact.manifest.sha256 == sha and deploy.artifact.manifest.labels["runtime"] == "openvino"
    ov.report(rollout.rollout_id, sha, State.ACTIVE)
    wait_for(lambda: control.GetRollout(fleet_pb2.GetRolloutRequest(rollout_id=rollout.rollout_id)).state
             == fleet_pb2.SUCCEEDED, 10, "the rollout to succeed")
    assert not plain.deploys() and not pi.deploys()
    shown = run_cli("edgefleet.fleet.cli", "rollout", "get", rollout.rollout_id, "--controller", controller.address,
                    "--token", controller.operator_token, timeout=60)
    assert shown.returncode == 0, shown.stderr
    rows = {line.split()[0]: line for line in shown.stdout.splitlines() if line.startswith("  ")}
    for device_id in (plain.id, pi.id):
        assert "skipped" in rows[device_id] and "no openvino on the device" in rows[device_id]
    assert "active" in rows[ov.id].lower() or "succeeded" in rows[ov.id].lower(), shown.stdout
