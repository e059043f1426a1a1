"""Commands that answer: SendCommand and SetPlanOverride against a real controller, with Sessions the test
drives and with real `edge-agent` processes (ping, restart in process and by exit, rollback refused, a
stream's latest frame drawn and captured through GetFrame, refused for unknown and served streams)."""
from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from edgefleet.agent.commands import CAPTURE_MAX_BYTES
from edgefleet.common.annotate import LINE_COLOUR, ZONE_COLOUR
from edgefleet.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, inference_pb2_grpc, types_pb2

from ..conftest import ROOT, run_cli, wait_for
from ..delivery import assert_frames_once
from ..processes import outbox_state
from ..unit.test_engines import tiny_onnx
from .test_gateway import auth, enroll
from .test_inference import jpeg, stream_frame


class AnsweringSession:
    """A device's Session that answers each command with `answer(command) -> CommandResult | None` (None: silence)."""

    def __init__(self, channel, token: str, answer):
        self._up: queue.Queue = queue.Queue()
        self._up.put(agent_pb2.AgentMessage(hello=agent_pb2.Hello(agent_version="test", streams=["cam0"])))
        self._call = agent_pb2_grpc.AgentGatewayStub(channel).Session(iter(self._up.get, None), metadata=auth(token),
                                                                       timeout=60)
        self.commands: list[agent_pb2.Command] = []
        self._answer = answer
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for message in self._call:
                if message.WhichOneof("body") == "command":
                    self.commands.append(message.command)
                    result = self._answer(message.command)
                    if result is not None:
                        self._up.put(agent_pb2.AgentMessage(result=result))
        except grpc.RpcError:
            pass  # closed at the end of the test

    def close(self) -> None:
        self._up.put(None)


def done(command):
    return agent_pb2.CommandResult(command_id=command.command_id, ok=True, detail="did it")


def connected(control, device_id: str) -> None:
    wait_for(lambda: control.GetDevice(fleet_pb2.GetDeviceRequest(device_id=device_id), timeout=5).connected, 10,
             f"{device_id}'s Session")


def test_each_device_gets_its_own_outcome(channel, control):
    fine, refusing, silent, offline = (enroll(channel, hardware_id=f"hw-{n}") for n in range(4))
    sessions = [AnsweringSession(channel, fine.device_token, done),
                AnsweringSession(channel, refusing.device_token, lambda c: agent_pb2.CommandResult(
                    command_id=c.command_id, ok=False, error="no previous engine to roll back to")),
                AnsweringSession(channel, silent.device_token, lambda c: None)]
    for device in (fine, refusing, silent):
        connected(control, device.device_id)
    outcomes = {}
    for device in (fine, refusing, silent, offline):
        reply = control.SendCommand(fleet_pb2.SendCommandRequest(device_id=device.device_id, rollback_reason="test",
                                                                 timeout_ms=300), timeout=10)
        (outcomes[device.device_id],) = reply.outcomes
        assert reply.command_id == reply.outcomes[0].command_id
    assert outcomes[fine.device_id].state == fleet_pb2.DONE and outcomes[fine.device_id].detail == "did it"
    assert outcomes[fine.device_id].round_trip_ms > 0
    assert (outcomes[refusing.device_id].state, outcomes[refusing.device_id].error) == (
        fleet_pb2.REFUSED, "no previous engine to roll back to")
    assert outcomes[silent.device_id].state == fleet_pb2.TIMED_OUT
    assert "timed out after 0.3 s" in outcomes[silent.device_id].error
    assert outcomes[offline.device_id].state == fleet_pb2.NOT_CONNECTED
    assert [c.rollback.reason for c in sessions[0].commands] == ["test"]
    for session in sessions:
        session.close()


def test_a_selector_sends_to_every_device_it_matches_at_once(channel, control):
    devices = [enroll(channel, hardware_id=f"hw-{n}") for n in range(3)]
    sessions = [AnsweringSession(channel, d.device_token, done) for d in devices]
    for device in devices:
        connected(control, device.device_id)
    for device in devices[:2]:
        control.SetDeviceLabels(fleet_pb2.SetDeviceLabelsRequest(device_id=device.device_id, set={"site": "lab"}),
                                timeout=5)
    reply = control.SendCommand(fleet_pb2.SendCommandRequest(select="site=lab", ping=True), timeout=10)
    assert sorted(o.device_id for o in reply.outcomes) == sorted(d.device_id for d in devices[:2])
    assert all(o.state == fleet_pb2.DONE for o in reply.outcomes)
    assert not sessions[2].commands
    for request, code in ((fleet_pb2.SendCommandRequest(select="site=yard", ping=True), "FAILED_PRECONDITION"),
                          (fleet_pb2.SendCommandRequest(device_id=devices[0].device_id, select="site=lab", ping=True),
                           "INVALID_ARGUMENT"),
                          (fleet_pb2.SendCommandRequest(device_id=devices[0].device_id), "INVALID_ARGUMENT")):
        with pytest.raises(grpc.RpcError) as err:
            control.SendCommand(request, timeout=5)
        assert err.value.code().name == code
    for session in sessions:
        session.close()


def test_a_refused_plan_override_leaves_the_previous_one(channel, control):
    device = enroll(channel)
    refuse = {"now": False}

    def answer(command):
        if refuse["now"]:
            return agent_pb2.CommandResult(command_id=command.command_id, ok=False, error="no rung fits 96")
        return done(command)

    session = AnsweringSession(channel, device.device_token, answer)
    connected(control, device.device_id)
    bounded = types_pb2.SetPlan(min_detect_interval=3)
    assert control.SetPlanOverride(fleet_pb2.SetPlanOverrideRequest(
        device_id=device.device_id, plan=bounded), timeout=15).plan_override == bounded
    refuse["now"] = True
    with pytest.raises(grpc.RpcError) as err:
        control.SetPlanOverride(fleet_pb2.SetPlanOverrideRequest(
            device_id=device.device_id, plan=types_pb2.SetPlan(max_input_size=96)), timeout=15)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "refused the plan override: no rung fits 96" in err.value.details()
    assert control.GetDevice(fleet_pb2.GetDeviceRequest(device_id=device.device_id),
                             timeout=5).plan_override == bounded
    session.close()


# ---- real agents ----

def start_agent(controller, state_dir: Path, source: Path | str, log: Path, *extra: str) -> subprocess.Popen:
    with log.open("a") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "edgefleet.agent.cli", "run", "--controller", controller.address,
             "--source", str(source), "--loop", "--state-dir", str(state_dir), "--enroll-key", "efk_test",
             "--name", "cmd-cam", "--threads", "1", *extra], stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)


def stop(agent: subprocess.Popen) -> int:
    if agent.poll() is None:
        agent.send_signal(signal.SIGTERM)
    try:
        return agent.wait(timeout=60)
    except subprocess.TimeoutExpired:
        agent.kill()
        return agent.wait(10)


def device_cli(controller, *args: str) -> subprocess.CompletedProcess:
    return run_cli("edgefleet.fleet.cli", "device", *args, "--controller", controller.address,
                   "--token", controller.operator_token, timeout=60)


def acked(control, device_id: str) -> int:
    return control.GetDevice(fleet_pb2.GetDeviceRequest(device_id=device_id), timeout=5).acked_sequence


def frames_of(control, device_id: str) -> list:
    return list(control.ListDetections(fleet_pb2.ListDetectionsRequest(device_id=device_id, limit=10_000),
                                       timeout=10).frames)


def the_agent(control) -> str:
    devices = wait_for(lambda: control.ListDevices(fleet_pb2.ListDevicesRequest(), timeout=5).devices, 120,
                       "the agent to enroll")
    device_id = devices[0].device_id
    wait_for(lambda: acked(control, device_id) >= 10, 120, "the agent's first detections")
    connected(control, device_id)
    return device_id


@pytest.mark.slow
def test_ping_rollback_plan_and_restart_in_process_on_a_real_agent(controller, control, vtest, tmp_path):
    log = tmp_path / "agent.log"
    agent = start_agent(controller, tmp_path / "agent", vtest, log, "--restart-mode", "in-process")
    try:
        device_id = the_agent(control)
        pinged = device_cli(controller, "ping", device_id[:8])
        assert pinged.returncode == 0, pinged.stdout + pinged.stderr
        assert pinged.stdout.startswith(f"{device_id}: answered in ") and pinged.stdout.rstrip().endswith("ms (pong)")

        rollback = device_cli(controller, "rollback", device_id, "--reason", "test")  # it never swapped engines
        assert rollback.returncode == 1
        assert f"{device_id}: refused: no previous engine to roll back to" in rollback.stdout

        plan = device_cli(controller, "plan", device_id, "--min-interval", "3")
        assert plan.returncode == 0, plan.stdout + plan.stderr
        assert f"{device_id}: override set; the device applied it" in plan.stdout
        wait_for(lambda: control.GetDevice(fleet_pb2.GetDeviceRequest(device_id=device_id), timeout=5).plan.reason
                 == "operator override: bounded to detect every >= 3", 30, "the plan it runs now")

        before = acked(control, device_id)
        restarted = device_cli(controller, "restart", device_id, "--reason", "test")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert "(loop restarted in process)" in restarted.stdout
        # The old loop's last frames (numbered after `before`, still in the outbox as the restart
        # returns) can arrive first: wait for the new loop's own first frame, not for a count.
        wait_for(lambda: any(f.frame_index == 0 and f.sequence > before for f in frames_of(control, device_id)),
                 120, "the restarted loop's first frame")
        assert agent.poll() is None  # the same process
        frames = frames_of(control, device_id)
        assert_frames_once([f.sequence for f in frames], len(frames), acked(control, device_id))  # none twice
        restarts = [f.sequence for f in frames if f.frame_index == 0]
        assert restarts[0] == 1 and any(s > before for s in restarts)  # the source opened again, at its start
        assert "frame loop restarted" in log.read_text()
    finally:
        code = stop(agent)
    assert code == 0, log.read_text()[-3000:]
    assert outbox_state(tmp_path / "agent")[0] == []  # everything acknowledged
    offline = device_cli(controller, "ping", device_id)
    assert offline.returncode == 1 and f"{device_id}: not connected" in offline.stdout


@pytest.mark.slow
def test_restart_in_exit_mode_ends_the_process_with_75_and_a_new_one_carries_on(controller, control, vtest,
                                                                                tmp_path):
    """The test plays systemd: it starts the agent again when it exits with 75 (RestartForceExitStatus=75)."""
    log = tmp_path / "agent.log"
    agent = start_agent(controller, tmp_path / "agent", vtest, log, "--restart-mode", "exit")
    try:
        device_id = the_agent(control)
        restarted = device_cli(controller, "restart", device_id)
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert f"{device_id}: done in " in restarted.stdout and "(exiting for systemd to restart)" in restarted.stdout
        assert agent.wait(timeout=90) == 75, log.read_text()[-3000:]
        assert outbox_state(tmp_path / "agent")[0] == []  # drained before it exited
        before = acked(control, device_id)
        agent = start_agent(controller, tmp_path / "agent", vtest, log, "--restart-mode", "exit")
        wait_for(lambda: acked(control, device_id) >= before + 20, 120, "frames from the restarted agent")
        devices = control.ListDevices(fleet_pb2.ListDevicesRequest(), timeout=5).devices
        assert [d.device_id for d in devices] == [device_id]  # the same enrollment
        frames = frames_of(control, device_id)
        assert_frames_once([f.sequence for f in frames], len(frames), acked(control, device_id))
        assert [f.frame_index for f in frames].count(0) >= 2, "the new process opened the source again"
    finally:
        code = stop(agent)
    assert code == 0, log.read_text()[-3000:]


# ---- CaptureFrame (GetFrame) ----

CAPTURE_CONFIG = """\
analytics:
  door:
    units: pixels
    zones: {porch: {polygon: [[40, 40], [400, 40], [400, 300], [40, 300]]}}
    lines: {kerb: {points: [[0, 600], [1280, 600]]}}
"""


def get_frame(control, device_id: str, stream_id: str = "", max_width: int = 0) -> types_pb2.Snapshot:
    return control.GetFrame(fleet_pb2.GetFrameRequest(device_id=device_id, stream_id=stream_id, max_width=max_width,
                                                      timeout_ms=10_000), timeout=20)


def refused(control, device_id: str, stream_id: str) -> str:
    with pytest.raises(grpc.RpcError) as err:
        get_frame(control, device_id, stream_id)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
    return err.value.details()


def share_drawn(image: np.ndarray, points: list[tuple[int, int]], colour: tuple[int, int, int]) -> float:
    """The share of (x, y) points whose pixel moved from the synthetic scene's grey (90) toward `colour`
    (JPEG blurs a thin line's colour, not its direction)."""
    grey = np.array([90, 90, 90])
    towards = (np.array(colour) - grey) / np.linalg.norm(np.array(colour) - grey)
    moved = [image[y, x].astype(float) - grey for x, y in points]
    return sum(float(m @ towards) > 0.8 * np.linalg.norm(m) and np.linalg.norm(m) > 40 for m in moved) / len(points)


@pytest.mark.slow
def test_a_real_agent_answers_get_frame_with_its_stream_drawn(controller, control, tmp_path):
    config = tmp_path / "agent.yaml"
    config.write_text(CAPTURE_CONFIG)
    log = tmp_path / "agent.log"
    agent = start_agent(controller, tmp_path / "agent", "synthetic://1280x720?objects=4", log, "--config",
                        str(config), "--stream-id", "door", "--model", str(tiny_onnx(tmp_path / "tiny.onnx")))
    try:
        device_id = the_agent(control)
        before = time.time()
        snapshot = get_frame(control, device_id, max_width=320)
        assert (snapshot.device_id, snapshot.stream_id, snapshot.kind) == (device_id, "door", "live")
        assert len(snapshot.jpeg) <= CAPTURE_MAX_BYTES
        small = cv2.imdecode(np.frombuffer(snapshot.jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert small is not None and small.shape == (180, 320, 3)
        assert before - 30 < snapshot.time.ToSeconds() <= time.time() + 1, "the capture time of a recent frame"

        default = get_frame(control, device_id, "door")  # 0: the agent's 640
        image = cv2.imdecode(np.frombuffer(default.jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (360, 640, 3)
        assert share_drawn(image, [(x, 300) for x in range(10, 630, 20)], LINE_COLOUR) > 0.6, "the line (y 600 / 2)"
        assert share_drawn(image, [(20, y) for y in range(30, 145, 10)], ZONE_COLOUR) > 0.6, "the zone's left edge"
        assert share_drawn(image, [(x, 200) for x in range(10, 630, 20)], LINE_COLOUR) < 0.2, "no line elsewhere"

        assert refused(control, device_id, "yard") == (
            f"device {device_id} stream yard could not capture a frame: unknown stream 'yard': this agent's local "
            "streams are door")
        pinged = device_cli(controller, "ping", device_id)  # the agent carries on
        assert pinged.returncode == 0, pinged.stdout + pinged.stderr
    finally:
        code = stop(agent)
    assert code == 0, log.read_text()[-3000:]


@pytest.mark.slow
def test_a_served_stream_has_no_frame_to_capture(controller, control, tmp_path):
    """`edge-agent serve` keeps no frame of the streams its clients send: GetFrame says so."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.agent.cli", "--log-level", "warning", "serve", "--listen", "127.0.0.1:0",
         "--controller", controller.address, "--state-dir", str(tmp_path / "agent"), "--enroll-key", "efk_test",
         "--model", str(tiny_onnx(tmp_path / "tiny.onnx"))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    more: queue.Queue = queue.Queue()
    try:
        first = proc.stdout.readline()
        assert first, proc.stderr.read()[-3000:]
        address = json.loads(first)["serving"]
        frame = jpeg(np.full((240, 320, 3), 90, np.uint8))

        def requests():
            yield stream_frame("porch", 0, frame)
            more.get(timeout=60)  # the served stream lasts as long as its call

        with grpc.insecure_channel(address) as channel:
            call = inference_pb2_grpc.InferenceServiceStub(channel).DetectStream(requests(), timeout=90)
            next(call)
            device_id = wait_for(lambda: control.ListDevices(fleet_pb2.ListDevicesRequest(), timeout=5).devices,
                                 60, "the agent to enroll")[0].device_id
            connected(control, device_id)
            wait_for(lambda: any(s.stream_id == "porch" for s in control.GetDevice(
                fleet_pb2.GetDeviceRequest(device_id=device_id), timeout=5).health.streams), 30, "the served stream")
            assert refused(control, device_id, "porch").endswith(
                "stream 'porch' is served (edge-agent serve): no frame kept for served streams")
            assert refused(control, device_id, "").endswith(
                "this agent has no local stream to capture (no frame kept for served streams)")
            more.put(None)
            assert list(call) == []
    finally:
        more.put(None)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
