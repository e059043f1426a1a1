"""Desired configuration with real `edge-agent` processes on the sample video: a change applied live,
one by restarting the loop (a new stream, sequences without a gap), one refused (the old config keeps
running, the reasons reach the CLI), one set while the device was away and the controller restarted."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.fleet.channel import open_channel
from edgefleet.v1 import fleet_pb2, fleet_pb2_grpc

from ..conftest import ROOT, free_port, run_cli, wait_for
from ..delivery import assert_frames_once
from ..processes import ControllerProcess

pytestmark = pytest.mark.slow


class Agent:
    """`edge-agent run` on a looping source until stopped (SIGTERM: it drains and prints its summary)."""

    def __init__(self, address: str, state_dir: Path, source: Path, *extra: str):
        self.log = state_dir.parent / f"{state_dir.name}.log"
        state_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgefleet.agent.cli", "run", "--controller", address, "--source", str(source),
                 "--loop", "--state-dir", str(state_dir), "--enroll-key", "efk_test", *extra],
                stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)

    def stop(self) -> dict:
        """SIGTERM; its summary (the JSON line it prints last)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, f"agent exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Fleet:
    """FleetControl as the test's operator, and the `edgefleet` CLI against the same controller."""

    def __init__(self, address: str, token: str):
        self.address, self.token = address, token

    def call(self, method: str, request):
        with open_channel(self.address, token=self.token) as channel:
            return getattr(fleet_pb2_grpc.FleetControlStub(channel), method)(request, timeout=30)

    def device(self, device_id: str = "") -> fleet_pb2.Device:
        devices = self.call("ListDevices", fleet_pb2.ListDevicesRequest()).devices
        return next(d for d in devices if not device_id or d.device_id == device_id)

    def connected(self) -> str:
        """The id of the one connected device (waits for it)."""
        def one() -> str:
            devices = [d for d in self.call("ListDevices", fleet_pb2.ListDevicesRequest()).devices if d.connected]
            return devices[0].device_id if devices else ""
        return wait_for(one, 120, "the agent's Session")

    def config(self, device_id: str) -> fleet_pb2.DeviceConfig:
        return self.call("GetDeviceConfig", fleet_pb2.GetDeviceRequest(device_id=device_id))

    def frames(self, device_id: str, stream_id: str = "") -> list:
        frames, after = [], 0
        while True:
            page = self.call("ListDetections", fleet_pb2.ListDetectionsRequest(
                device_id=device_id, stream_id=stream_id, after_sequence=after, limit=10_000)).frames
            if not page:
                return frames
            frames += page
            after = page[-1].sequence

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        env = {"EDGEFLEET_CONTROLLER": self.address, "EDGEFLEET_TOKEN": self.token}
        return run_cli("edgefleet.fleet.cli", *args, env=env, stdin=stdin)


@pytest.fixture
def fleet(controller) -> Fleet:
    return Fleet(controller.address, controller.operator_token)


def test_a_detect_interval_change_applies_live(fleet, vtest, tmp_path):
    agent = Agent(fleet.address, tmp_path / "agent", vtest, "--detect-interval", "1")
    try:
        device_id = fleet.connected()
        (tmp_path / "interval.yaml").write_text("detect-interval: 4\n")
        done = fleet.cli("device", "config", "set", device_id, str(tmp_path / "interval.yaml"), "--wait", "30")
        assert done.returncode == 0, done.stderr
        assert f"{device_id}: desired config v1 set (for device)" in done.stdout
        assert f"{device_id}: applied (live)" in done.stdout
        config = fleet.config(device_id)
        assert (config.desired_version, config.applied_version, config.in_sync, config.how) == (1, 1, True, "live")
        wait_for(lambda: fleet.device(device_id).plan.detect_interval == 4, 30, "the plan's new interval")
        assert "desired config v1 (live)" in fleet.device(device_id).plan.reason
        got = fleet.cli("device", "config", "get", device_id)
        assert "in sync:  yes" in got.stdout and "detect-interval: 4" in got.stdout
        assert fleet.cli("device", "config", "diff", device_id).returncode == 0
    finally:
        summary = agent.stop()
    frames = fleet.frames(device_id)
    assert_frames_once([f.sequence for f in frames], summary["frames"], summary["acked_sequence"])
    assert any(d.predicted for f in frames[-20:] for d in f.detections), "interval 4: the tracker predicts between"


def test_a_new_stream_restarts_the_loop_without_a_gap_in_the_outbox(fleet, vtest, tmp_path):
    agent = Agent(fleet.address, tmp_path / "agent", vtest, "--stream-id", "cam0")
    try:
        device_id = fleet.connected()
        wait_for(lambda: len(fleet.frames(device_id)) >= 10, 60, "frames from cam0")
        document = f"sources:\n  - {{uri: {vtest}, stream_id: door}}\n  - {{uri: {vtest}, stream_id: yard}}\n"
        done = fleet.cli("device", "config", "set", device_id, "-", "--wait", "60", stdin=document)
        assert done.returncode == 0, done.stderr
        assert "applied (loop restarted)" in done.stdout
        for stream in ("door", "yard"):
            wait_for(lambda stream=stream: len(fleet.frames(device_id, stream)) >= 10, 60, f"frames of {stream}")
        cam0_before = len(fleet.frames(device_id, "cam0"))
    finally:
        summary = agent.stop()
    frames = fleet.frames(device_id)
    assert_frames_once([f.sequence for f in frames], summary["frames"], summary["acked_sequence"])
    streams = [f.stream_id for f in frames]
    last_cam0 = max(i for i, s in enumerate(streams) if s == "cam0")
    assert set(streams[last_cam0 + 1:]) == {"door", "yard"}, "after the restart only the new streams record"
    assert len(fleet.frames(device_id, "cam0")) == cam0_before
    assert fleet.config(device_id).how == "loop restarted"


def test_zones_and_lines_set_from_the_controller_restart_the_loop_and_count(fleet, vtest, tmp_path):
    """A counting line reaches a running device through its desired configuration (no ssh): the loop
    restarts with it, and the device counts on it; a zero-length line is refused by the controller, which
    checks the shapes as the device would."""
    from .test_metrics import scrape

    port = free_port()
    agent = Agent(fleet.address, tmp_path / "agent", vtest, "--metrics-listen", f"127.0.0.1:{port}")
    try:
        device_id = fleet.connected()
        bad = "analytics:\n  cam0:\n    lines: {door: {points: [[0.5, 0.5], [0.5, 0.5]]}}\n"
        refused = fleet.cli("device", "config", "set", device_id, "-", "--wait", "60", stdin=bad)
        assert refused.returncode == 2 and "zero length" in refused.stderr, refused.stdout + refused.stderr
        document = "analytics:\n  cam0:\n    lines: {middle: {points: [[0.0, 0.6], [1.0, 0.6]], labels: [person]}}\n"
        done = fleet.cli("device", "config", "set", device_id, "-", "--wait", "60", stdin=document)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "applied (loop restarted)" in done.stdout
        key = 'edgefleet_agent_crossings_total{direction="%s",label="person",line="middle",stream="cam0"}'
        wait_for(lambda: sum(scrape(port).get(key % d, 0.0) for d in ("in", "out")) >= 1, 180,
                 "a crossing of the line the controller set")
    finally:
        agent.stop()


def test_a_refused_document_keeps_the_old_config_running_and_says_why(fleet, vtest, tmp_path):
    agent = Agent(fleet.address, tmp_path / "agent", vtest, "--detect-interval", "2")
    try:
        device_id = fleet.connected()
        # the controller refuses what it can see on its own: nothing is stored or sent
        own = fleet.cli("device", "config", "set", device_id, "-", stdin="controller: elsewhere:1\n")
        assert own.returncode == 2
        assert "controller: set on the device only" in own.stderr
        assert fleet.config(device_id).desired_version == 0
        # the device refuses what conflicts with its own flags, and a source it cannot open
        for version, document, reason in (
                (1, "auto-plan: true\n", "--detect-interval and --auto-plan conflict"),
                (2, "sources: [/nonexistent/clip.mp4]\n", "no such file")):
            refused = fleet.cli("device", "config", "set", device_id, "-", "--wait", "30", stdin=document)
            assert refused.returncode == 1, refused.stdout + refused.stderr
            assert f"{device_id}: refused: " in refused.stderr and reason in refused.stderr
            config = fleet.config(device_id)
            assert (config.desired_version, config.refused_version, config.applied_version) == (version, version, 0)
            assert not config.in_sync and reason in " ".join(config.errors)
        got = fleet.cli("device", "config", "get", device_id)
        assert "in sync:  no" in got.stdout and "refused:  v2" in got.stdout
        diff = fleet.cli("device", "config", "diff", device_id)
        assert diff.returncode == 1 and "+sources: [/nonexistent/clip.mp4]" in diff.stdout
        before = len(fleet.frames(device_id, "cam0"))
        wait_for(lambda: len(fleet.frames(device_id, "cam0")) > before + 10, 60, "cam0 still recording")
        assert fleet.device(device_id).plan.detect_interval == 2
    finally:
        agent.stop()
    assert not (tmp_path / "agent" / "desired.yaml").exists()


def test_a_document_set_while_the_device_is_away_reaches_it_after_a_controller_restart(vtest, tmp_path):
    port = free_port()
    ctl = ControllerProcess(tmp_path / "fleet.db", port, tmp_path).start()
    token = run_cli("edgefleet.fleet.cli", "operator-token", "create", "--db", str(tmp_path / "fleet.db"),
                    "--name", "t").stdout.strip().split()[-1]
    fleet = Fleet(ctl.address, token)
    try:
        agent = Agent(ctl.address, tmp_path / "agent", vtest)
        device_id = fleet.connected()
        agent.stop()
        wait_for(lambda: not fleet.device(device_id).connected, 30, "the agent's Session to close")
        away = fleet.cli("device", "config", "set", device_id, "-", "--wait", "5",
                         stdin="detect-interval: 3\nmotion-gate: 2\n")
        assert away.returncode == 0, away.stderr
        assert f"{device_id}: not connected" in away.stderr
        ctl.kill()  # the document is in the database
        ctl.start()
        agent = Agent(ctl.address, tmp_path / "agent", vtest)
        wait_for(lambda: fleet.config(device_id).in_sync, 120, "the device to apply v1 at reconnect")
        assert fleet.config(device_id).applied_version == 1
        wait_for(lambda: fleet.device(device_id).plan.detect_interval == 3, 30, "the new interval in the plan")
        agent.stop()
        # the next start runs the kept document from its hello on: nothing to send again
        agent = Agent(ctl.address, tmp_path / "agent", vtest)
        wait_for(lambda: fleet.device(device_id).connected, 120, "the agent's third Session")
        config = fleet.config(device_id)
        assert (config.applied_version, config.how, config.in_sync) == (1, "at start", True)
        assert fleet.device(device_id).plan.detect_interval == 3
        agent.stop()
    finally:
        ctl.stop()


def test_a_model_change_loads_the_detector_in_the_new_loop(fleet, vtest, tmp_path):
    from edgefleet.models.bundled import default_model

    model = tmp_path / "copy-of-bundled.onnx"
    model.write_bytes(default_model().read_bytes())
    agent = Agent(fleet.address, tmp_path / "agent", vtest)
    try:
        device_id = fleet.connected()
        done = fleet.cli("device", "config", "set", device_id, "-", "--wait", "60", stdin=f"model: {model}\n")
        assert done.returncode == 0, done.stderr
        assert "applied (loop restarted)" in done.stdout
        wait_for(lambda: fleet.device(device_id).plan.model == "copy-of-bundled", 30, "the plan's new model")
        before = len(fleet.frames(device_id))
        wait_for(lambda: len(fleet.frames(device_id)) > before + 10, 60, "frames from the new detector")
    finally:
        summary = agent.stop()
    frames = fleet.frames(device_id)
    assert_frames_once([f.sequence for f in frames], summary["frames"], summary["acked_sequence"])
