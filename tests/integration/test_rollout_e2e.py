"""Rollouts end to end: a real controller process, real agent processes detecting on vtest.avi.

One fleet for the whole module (two agents on the sample video, one scripted device that cannot
run ONNX), rollouts one after the other: a good artifact first, then one per fault. Every faulty
rollout must halt at its canary with the reason recorded, and leave both agents detecting with
the engine they had.
"""
from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from edgefleet.fleet.channel import open_channel
from edgefleet.models.bundled import default_model
from edgefleet.v1 import fleet_pb2, fleet_pb2_grpc, types_pb2

from ..conftest import ROOT, free_port, run_cli, wait_for
from ..onnx_variants import blind_onnx, slow_onnx, variant_onnx, warmup_failing_onnx
from ..processes import ControllerProcess
from .test_rollouts_controller import ScriptedDevice

pytestmark = pytest.mark.slow

KEY = "efk_test"  # the one tests.processes.ControllerProcess serves with
GATE = ["--gate-window", "2"]


class Fleet:
    """The controller (a process we can SIGKILL and restart on the same port) and two agents."""

    def __init__(self, workdir: Path, vtest: Path):
        self.workdir = workdir
        self.vtest = vtest
        self.db = workdir / "fleet.db"
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.token = subprocess.run(
            [sys.executable, "-m", "edgefleet.fleet.cli", "operator-token", "create", "--db", str(self.db),
             "--create"],
            cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
        self.metrics_port = free_port()
        self.controller = ControllerProcess(self.db, self.port, workdir, "--metrics-listen",
                                            f"127.0.0.1:{self.metrics_port}", *GATE).start()
        self.agents: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def start_agent(self, name: str, *extra: str, source: str = "", env: dict | None = None) -> None:
        self.logs[name] = self.workdir / f"{name}.log"
        self.agents[name] = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.agent.cli", "run", "--controller", self.address,
             "--source", source or str(self.vtest), "--loop", "--state-dir", str(self.workdir / name),
             "--enroll-key", KEY,
             "--name", name, "--gate-sample-every", "1", "--engine-confirm-s", "5", *extra],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.logs[name].open("a"), env={**os.environ, **(env or {})})

    def kill_agent(self, name: str) -> None:
        self.agents[name].send_signal(signal.SIGKILL)
        self.agents[name].wait(10)

    def log(self, name: str) -> str:
        return self.logs[name].read_text()

    def control(self):
        return open_channel(self.address, token=self.token)

    def stop(self) -> None:
        for proc in self.agents.values():
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        self.controller.stop()

    # ---- operator calls ----

    def call(self, method: str, request, timeout: float = 30):
        with self.control() as channel:
            return getattr(fleet_pb2_grpc.FleetControlStub(channel), method)(request, timeout=timeout)

    def push(self, path: Path) -> str:
        data = path.read_bytes()

        def messages():
            yield fleet_pb2.UploadArtifactRequest(manifest=types_pb2.ArtifactManifest(name=path.stem, format="onnx"))
            for i in range(0, len(data), 1 << 20):
                yield fleet_pb2.UploadArtifactRequest(chunk=data[i:i + (1 << 20)])

        return self.call("UploadArtifact", messages()).manifest.sha256

    def rollout(self, sha: str, gate_fps_ratio: float = 0.5, **spec) -> str:
        spec.setdefault("canary", 1)
        request = fleet_pb2.CreateRolloutRequest(artifact_sha256=sha, waves_percent=[100],
                                                 gate_fps_ratio=gate_fps_ratio, **spec)
        return self.call("CreateRollout", request).rollout_id

    def get(self, rollout_id: str) -> fleet_pb2.Rollout:
        return self.call("GetRollout", fleet_pb2.GetRolloutRequest(rollout_id=rollout_id))

    def finished(self, rollout_id: str, timeout: float = 120) -> fleet_pb2.Rollout:
        done = (fleet_pb2.SUCCEEDED, fleet_pb2.FAILED, fleet_pb2.ABORTED)
        return wait_for(lambda: (r := self._try_get(rollout_id)) is not None and r.state in done and r,
                        timeout, f"rollout {rollout_id} to finish")

    def _try_get(self, rollout_id: str) -> fleet_pb2.Rollout | None:
        try:
            return self.get(rollout_id)
        except grpc.RpcError:
            return None  # the controller is restarting

    def devices(self) -> dict[str, fleet_pb2.Device]:
        return {d.hostname: d for d in self.call("ListDevices", fleet_pb2.ListDevicesRequest()).devices}

    def wait_detecting(self, count: int = 2) -> None:
        """Until `count` devices are connected, each having reported frames."""
        wait_for(lambda: len(self.devices()) == count and all(d.connected and d.health.frames_total > 0
                                                              for d in self.devices().values()),
                 120, f"{count} agents detecting")

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        """`edgefleet ARGS` as the operator, against this controller."""
        return run_cli("edgefleet.fleet.cli", *args, "--controller", self.address, timeout=120,
                       env={"EDGEFLEET_TOKEN": self.token}, stdin=stdin)

    def served_bytes(self) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        return float(re.search(r"^edgefleet_artifact_bytes_served_total (\S+)$", text, re.M).group(1))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, vtest):
    workdir = tmp_path_factory.mktemp("rollout-e2e")
    fleet = Fleet(workdir, vtest)
    try:
        for name in ("cam-a", "cam-b"):
            fleet.start_agent(name)
        fleet.wait_detecting()
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The bundled detector in variants: new bytes of the same model, slower, and broken ones."""
    folder = tmp_path_factory.mktemp("models")
    bundled = default_model()
    made = {f"same-{i}": variant_onnx(bundled, folder / f"same-{i}.onnx", f"variant {i}") for i in range(8)}
    made["slow"] = slow_onnx(bundled, folder / "slow.onnx", size=1024, matmuls=12)
    made["warmup-fails"] = warmup_failing_onnx(bundled, folder / "warmup-fails.onnx")
    made["blind"] = blind_onnx(bundled, folder / "blind.onnx")
    garbage = folder / "garbage.onnx"
    garbage.write_bytes(os.urandom(1 << 20))
    made["garbage"] = garbage
    return made


def engines_of(fleet: Fleet) -> dict[str, str]:
    return {name: d.plan.artifact_sha256 for name, d in fleet.devices().items() if name in fleet.agents}


def still_detecting(fleet: Fleet) -> None:
    before = {n: d.health.frames_total for n, d in fleet.devices().items() if n in fleet.agents}
    wait_for(lambda: all(fleet.devices()[n].health.frames_total > before[n] for n in before), 30,
             "both agents to keep detecting")


def test_01_a_good_artifact_reaches_every_compatible_device(fleet, models):
    no_onnx = ScriptedDevice(grpc.insecure_channel(fleet.address), "jetson-no-ort",
                             types_pb2.HardwareProfile(platform="jetson"), key=KEY)  # cannot run ONNX
    sha = fleet.push(models["same-0"])
    rollout = fleet.finished(fleet.rollout(sha))
    assert rollout.state == fleet_pb2.SUCCEEDED, rollout.reason
    assert [(w.target, w.succeeded) for w in rollout.waves] == [(1, 1), (1, 1)]
    skipped = [d for d in rollout.devices if d.reason.startswith("skipped")]
    assert [d.device_id for d in skipped] == [no_onnx.id] and "onnxruntime" in skipped[0].reason
    assert not no_onnx.deploys()
    wait_for(lambda: set(engines_of(fleet).values()) == {sha}, 30, "both plans naming the new engine")
    still_detecting(fleet)
    no_onnx.disconnect()


def assert_halted_at_canary(fleet: Fleet, rollout_id: str, reason: str) -> None:
    before = engines_of(fleet)
    rollout = fleet.finished(rollout_id)
    assert rollout.state == fleet_pb2.FAILED
    assert "canary failed" in rollout.reason and re.search(reason, rollout.reason), rollout.reason
    canary, rest = rollout.devices[0], rollout.devices[1]
    assert canary.state == types_pb2.DeploymentStatus.FAILED and re.search(reason, canary.reason)
    assert rest.state == types_pb2.DeploymentStatus.STATE_UNSPECIFIED  # never asked
    assert engines_of(fleet) == before  # every device still on the engine it had
    still_detecting(fleet)


def tamper_file(fleet: Fleet, sha: str, how) -> None:
    path = fleet.db.parent / "artifacts" / sha[:2] / sha
    data = bytearray(path.read_bytes())
    path.write_bytes(how(data))


@pytest.mark.parametrize("fault, reason", [
    ("corrupt", "sha256"),
    ("truncated", "serves \\d+ bytes|bytes"),
    ("signature", "signature"),
])
def test_02_tampered_artifacts_halt_at_the_canary(fleet, models, fault, reason):
    sha = fleet.push(models[{"corrupt": "same-1", "truncated": "same-2", "signature": "same-3"}[fault]])
    if fault == "corrupt":
        tamper_file(fleet, sha, lambda d: d[:1000] + bytes([d[1000] ^ 0xFF]) + d[1001:])
    elif fault == "truncated":
        tamper_file(fleet, sha, lambda d: d[: len(d) // 2])
    else:
        with sqlite3.connect(fleet.db) as db:
            (signature,) = db.execute("select signature from artifacts where sha256 = ?", [sha]).fetchone()
            db.execute("update artifacts set signature = ? where sha256 = ?",
                       [bytes([signature[0] ^ 1]) + signature[1:], sha])
    assert_halted_at_canary(fleet, fleet.rollout(sha), reason)


@pytest.mark.parametrize("model, reason", [
    ("garbage", "load|ONNX|protobuf|parse"),
    ("warmup-fails", "warm|Reshape|load"),
    ("slow", "throughput"),
])
def test_03_engines_that_fail_on_the_device_halt_at_the_canary(fleet, models, model, reason):
    assert_halted_at_canary(fleet, fleet.rollout(fleet.push(models[model])), reason)


def test_04_an_agent_killed_mid_download_resumes_from_its_offset(fleet, models):
    fleet.kill_agent("cam-a")
    fleet.start_agent("cam-a", "--download-mbps", "4")
    wait_for(lambda: fleet.devices()["cam-a"].connected, 60, "cam-a back")
    sha = fleet.push(models["same-4"])
    size = models["same-4"].stat().st_size
    served_before = fleet.served_bytes()
    rollout_id = fleet.rollout(sha, selector={})
    canary = fleet.get(rollout_id).devices[0].device_id
    name = next(n for n, d in fleet.devices().items() if d.device_id == canary)
    part = fleet.workdir / name / "engines" / "staging" / f"{sha}.part"
    assert name == "cam-a"  # connected devices make the canary in id order: the rate-capped one
    # far enough in that what the controller had in flight when the agent died (HTTP/2 windows, socket
    # buffers: a few MB) is less than what a restart from zero would fetch again
    wait_for(lambda: part.exists() and size // 4 < part.stat().st_size < size // 2, 60, "the download under way")
    fleet.kill_agent("cam-a")
    left = part.stat().st_size
    time.sleep(1)  # the controller sees the stream cancelled
    served_first = fleet.served_bytes() - served_before  # `left`, and what was in flight when it died
    fleet.start_agent("cam-a")
    rollout = fleet.finished(rollout_id)
    assert rollout.state == fleet_pb2.SUCCEEDED, rollout.reason
    assert re.search(rf"resuming the download of .+ at byte {left} of {size}", fleet.log("cam-a"))
    # after the kill, resumed: the canary's rest (size - left) and the second device's whole file;
    # starting over would have cost `left` (> size / 4) more. Half of it is the margin for what
    # the canary's second download had in flight beyond the rest.
    assert fleet.served_bytes() - served_before - served_first < 2 * size - left // 2


def test_05_a_controller_killed_mid_rollout_continues(fleet, models):
    sha = fleet.push(models["same-5"])
    rollout_id = fleet.rollout(sha)
    wait_for(lambda: any(d.state >= types_pb2.DeploymentStatus.DOWNLOADING for d in fleet.get(rollout_id).devices),
             60, "the canary under way")
    fleet.controller.kill()
    fleet.controller.start()
    rollout = fleet.finished(rollout_id, timeout=180)
    assert rollout.state == fleet_pb2.SUCCEEDED, rollout.reason
    wait_for(lambda: all(sha == s for s in engines_of(fleet).values()), 60, "both agents on the new engine")


def test_06_the_model_the_devices_run_passes_the_default_gate_on_cpu(fleet, models):
    """The bundled model in new bytes, at the default --gate-fps-ratio (0.8): the shadow test takes
    turns with the running engine on these CPU-only devices, so the same network measures ~1.0x."""
    sha = fleet.push(models["same-6"])
    rollout = fleet.finished(fleet.rollout(sha, gate_fps_ratio=0))  # 0: the controller's default
    assert rollout.state == fleet_pb2.SUCCEEDED, rollout.reason
    assert [d.state for d in rollout.devices if d.device_id in {x.device_id for x in fleet.devices().values()}
            and not d.reason.startswith("skipped")] == [types_pb2.DeploymentStatus.ACTIVE] * 2
    wait_for(lambda: set(engines_of(fleet).values()) == {sha}, 30, "both plans naming the new engine")


def test_07_abort_during_a_shadow_test_stops_it_and_no_device_swaps(fleet, models):
    """cam-a samples one frame in 40 for its shadow test (a long window); the abort lands in it.
    cam-b may pass its short one first: it is then sent back (--on-failure rollback)."""
    fleet.kill_agent("cam-a")
    fleet.start_agent("cam-a", "--gate-sample-every", "40")
    wait_for(lambda: fleet.devices()["cam-a"].connected, 60, "cam-a back")
    before = engines_of(fleet)
    sha = fleet.push(models["same-7"])
    rollout_id = fleet.rollout(sha, gate_fps_ratio=0.9, canary=2)
    cam_a = fleet.devices()["cam-a"].device_id
    state_of = {d.device_id: d for d in fleet.get(rollout_id).devices}
    assert cam_a in state_of
    wait_for(lambda: next(d for d in fleet.get(rollout_id).devices if d.device_id == cam_a).state
             == types_pb2.DeploymentStatus.SHADOW_TESTING, 120, "cam-a's shadow test")
    aborted = fleet.call("AbortRollout", fleet_pb2.RolloutRef(rollout_id=rollout_id, reason="wrong model"))
    assert aborted.state == fleet_pb2.ABORTED and aborted.reason.startswith("aborted by an operator: wrong model")
    cancelled = wait_for(lambda: (d := next(d for d in fleet.get(rollout_id).devices if d.device_id == cam_a))
                         .state == types_pb2.DeploymentStatus.FAILED and d, 30, "cam-a to stop its shadow test")
    assert cancelled.reason == f"cancelled: rollout {rollout_id} aborted", cancelled.reason
    assert "cancelled: rollout" in fleet.log("cam-a")
    # every device is back on (or never left) the engine it had; nobody ends on the new one
    wait_for(lambda: engines_of(fleet) == before, 60, "both agents on the engine they had")
    final = fleet.get(rollout_id)
    assert types_pb2.DeploymentStatus.ACTIVE not in {d.state for d in final.devices}
    still_detecting(fleet)
    assert engines_of(fleet) == before


def test_08_a_wave_that_fails_after_the_canary_switched_sends_the_canary_back(fleet, models):
    """Two more agents, labelled group=rb: rb-0 watches an empty scene, rb-1 the sample video. The
    candidate finds nothing: on rb-0 (the canary, first by id) it agrees with the running engine and
    switches; on rb-1 it misses every person and fails the agreement gate, so the rollout fails and
    (--on-failure rollback, the default) rb-0 goes back to the engine it had."""
    fleet.start_agent("rb-0-empty", "--label", "group=rb", source="synthetic://320x240?objects=0&frames=0")
    fleet.start_agent("rb-1-video", "--label", "group=rb")
    wait_for(lambda: all(n in fleet.devices() and fleet.devices()[n].connected
                         and fleet.devices()[n].health.frames_total > 0 for n in ("rb-0-empty", "rb-1-video")),
             120, "the two rb agents detecting")
    before = {n: fleet.devices()[n].plan.artifact_sha256 for n in ("rb-0-empty", "rb-1-video")}
    sha = fleet.push(models["blind"])
    rollout_id = fleet.rollout(sha, select="group=rb")
    rollout = fleet.finished(rollout_id, timeout=180)
    assert rollout.state == fleet_pb2.FAILED, rollout.reason
    ids = {fleet.devices()[n].device_id: n for n in before}
    states = {ids[d.device_id]: d for d in rollout.devices}
    assert set(states) == set(before)  # the selector chose the two rb devices only
    assert states["rb-1-video"].state == types_pb2.DeploymentStatus.FAILED
    assert "agreement" in states["rb-1-video"].reason, states["rb-1-video"].reason
    canary = wait_for(lambda: (d := next(d for d in fleet.get(rollout_id).devices if ids[d.device_id] == "rb-0-empty"))
                      .state == types_pb2.DeploymentStatus.ROLLED_BACK and d, 60, "the canary rolled back")
    assert canary.wave == 0
    wait_for(lambda: {n: fleet.devices()[n].plan.artifact_sha256 for n in before} == before, 60,
             "both rb agents on the engine they had")
    assert "rolled back" in fleet.get(rollout_id).reason or "sent back" in fleet.get(rollout_id).reason, \
        fleet.get(rollout_id).reason
