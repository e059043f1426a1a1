"""Revoking and removing devices against a real controller: device Sessions and detection streams driven over
gRPC by the test, an `edge-agent` process revoked mid-stream, and the CLI."""
from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading

import grpc
import pytest

from edgefleet.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2

from ..conftest import ROOT, run_cli, wait_for
from .test_gateway import auth, batch, enroll


class Session:
    """A device's Session held open by the test; `ended` gets the stream's end (None, or its error)."""

    def __init__(self, channel, token: str):
        self._up: queue.Queue = queue.Queue()
        self._up.put(agent_pb2.AgentMessage(hello=agent_pb2.Hello(agent_version="test", streams=["cam0"])))
        self._call = agent_pb2_grpc.AgentGatewayStub(channel).Session(iter(self._up.get, None), metadata=auth(token),
                                                                       timeout=60)
        self.ended: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for _ in self._call:
                pass
        except grpc.RpcError as err:
            self.ended.put(err)
            return
        self.ended.put(None)

    def close(self) -> None:
        self._up.put(None)


def open_publish(channel, token: str):
    """A PublishDetections stream the test feeds; (its batch queue, its acks queue, the call)."""
    up: queue.Queue = queue.Queue()
    call = agent_pb2_grpc.AgentGatewayStub(channel).PublishDetections(iter(up.get, None), metadata=auth(token),
                                                                        timeout=60)
    acks: queue.Queue = queue.Queue()

    def read() -> None:
        try:
            for ack in call:
                acks.put(ack)
        except grpc.RpcError as err:
            acks.put(err)

    threading.Thread(target=read, daemon=True).start()
    return up, acks, call


def get(control, device_id: str) -> fleet_pb2.Device:
    return control.GetDevice(fleet_pb2.GetDeviceRequest(device_id=device_id), timeout=5)


def stored(control, device_id: str) -> list[int]:
    frames = control.ListDetections(fleet_pb2.ListDetectionsRequest(device_id=device_id, limit=1000), timeout=5)
    return [f.sequence for f in frames.frames]


def test_revoke_closes_the_open_streams_refuses_the_token_and_keeps_the_data(channel, control):
    device = enroll(channel)
    session = Session(channel, device.device_token)
    up, acks, _ = open_publish(channel, device.device_token)
    up.put(batch(1, 2, 3))
    assert acks.get(timeout=10).acked_sequence == 3
    wait_for(lambda: get(control, device.device_id).connected, 10, "the Session")

    revoked = control.RevokeDevice(fleet_pb2.RevokeDeviceRequest(device_id=device.device_id, reason="stolen"),
                                   timeout=5)
    assert revoked.revoked and not revoked.connected

    ended = acks.get(timeout=10)  # the open PublishDetections stream ends at once, with the reason
    assert isinstance(ended, grpc.RpcError) and ended.code() == grpc.StatusCode.UNAUTHENTICATED
    assert f"device {device.device_id} was revoked (stolen)" in ended.details()
    closed = session.ended.get(timeout=10)  # so does the Session
    assert closed.code() == grpc.StatusCode.UNAUTHENTICATED and "was revoked" in closed.details()
    with pytest.raises(grpc.RpcError) as refused:  # and the token opens nothing any more
        list(agent_pb2_grpc.AgentGatewayStub(channel).PublishDetections(
            iter([batch(4)]), metadata=auth(device.device_token), timeout=5))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    assert stored(control, device.device_id) == [1, 2, 3]  # the data is kept
    again = get(control, device.device_id)
    assert again.revoked and again.detections_stored == 3


def test_the_same_hardware_enrolls_again_after_a_revoke_under_the_same_id(channel, control):
    first = enroll(channel, hardware_id="hw-back")
    control.RevokeDevice(fleet_pb2.RevokeDeviceRequest(device_id=first.device_id), timeout=5)
    second = enroll(channel, hardware_id="hw-back")
    assert second.device_id == first.device_id and second.device_token != first.device_token
    assert not get(control, first.device_id).revoked
    assert list(agent_pb2_grpc.AgentGatewayStub(channel).PublishDetections(
        iter([batch(1)]), metadata=auth(second.device_token), timeout=5))[-1].acked_sequence == 1
    with pytest.raises(grpc.RpcError) as old:
        list(agent_pb2_grpc.AgentGatewayStub(channel).PublishDetections(
            iter([batch(2)]), metadata=auth(first.device_token), timeout=5))
    assert old.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_remove_refuses_a_connected_device_then_removes_with_or_without_its_data(channel, control):
    kept, purged = enroll(channel, hardware_id="hw-kept"), enroll(channel, hardware_id="hw-purged")
    for device in (kept, purged):
        list(agent_pb2_grpc.AgentGatewayStub(channel).PublishDetections(
            iter([batch(1, 2)]), metadata=auth(device.device_token), timeout=5))
    session = Session(channel, kept.device_token)
    wait_for(lambda: get(control, kept.device_id).connected, 10, "the Session")
    with pytest.raises(grpc.RpcError) as connected:
        control.RemoveDevice(fleet_pb2.RemoveDeviceRequest(device_id=kept.device_id), timeout=5)
    assert connected.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "revoke it first" in connected.value.details()
    session.close()
    wait_for(lambda: not get(control, kept.device_id).connected, 10, "the Session to close")

    removed = control.RemoveDevice(fleet_pb2.RemoveDeviceRequest(device_id=kept.device_id), timeout=5)
    assert (removed.device_id, removed.detections_deleted) == (kept.device_id, 0)
    assert stored(control, kept.device_id) == [1, 2]  # kept without --purge-data
    purge = control.RemoveDevice(fleet_pb2.RemoveDeviceRequest(device_id=purged.device_id, purge_data=True),
                                 timeout=5)
    assert purge.detections_deleted == 2
    with pytest.raises(grpc.RpcError) as purged_data:  # nothing of it is left to list
        stored(control, purged.device_id)
    assert purged_data.value.code() == grpc.StatusCode.NOT_FOUND
    listed = control.ListDevices(fleet_pb2.ListDevicesRequest(), timeout=5).devices
    assert [d.device_id for d in listed] == []
    for device in (kept, purged):  # the removed devices' tokens open nothing
        with pytest.raises(grpc.RpcError) as gone:
            list(agent_pb2_grpc.AgentGatewayStub(channel).PublishDetections(
                iter([batch(3)]), metadata=auth(device.device_token), timeout=5))
        assert gone.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as unknown:
        control.RemoveDevice(fleet_pb2.RemoveDeviceRequest(device_id=kept.device_id), timeout=5)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_cli_revoke_and_remove(controller, channel, control):
    device = enroll(channel, hardware_id="hw-cli")
    list(agent_pb2_grpc.AgentGatewayStub(channel).PublishDetections(
        iter([batch(1, 2, 3)]), metadata=auth(device.device_token), timeout=5))
    ops = ("--controller", controller.address, "--token", controller.operator_token)
    revoked = run_cli("edgefleet.fleet.cli", "device", "revoke", device.device_id[:8], "--reason", "retired", *ops)
    assert revoked.returncode == 0, revoked.stderr
    assert f"{device.device_id}: revoked" in revoked.stdout and "(3 detection records)" in revoked.stdout
    listed = run_cli("edgefleet.fleet.cli", "devices", *ops)
    assert [line.split()[:2] for line in listed.stdout.splitlines()[1:]] == [[device.device_id, "REVOKED"]]
    removed = run_cli("edgefleet.fleet.cli", "device", "remove", device.device_id, "--purge-data", *ops)
    assert removed.returncode == 0, removed.stderr
    assert f"{device.device_id}: removed; 3 detection records" in removed.stdout
    again = run_cli("edgefleet.fleet.cli", "device", "remove", device.device_id, *ops)
    assert again.returncode == 2 and f"no device {device.device_id!r}" in again.stderr


@pytest.mark.slow
def test_an_agent_revoked_mid_stream_stops_and_its_data_stays(controller, control, vtest, tmp_path):
    log = tmp_path / "agent.log"
    with log.open("w") as err:
        agent = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.agent.cli", "run", "--controller", controller.address,
             "--source", str(vtest), "--loop", "--state-dir", str(tmp_path / "agent"), "--enroll-key", "efk_test",
             "--name", "revoked-cam", "--threads", "1"], stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
    try:
        devices = wait_for(lambda: control.ListDevices(fleet_pb2.ListDevicesRequest(), timeout=5).devices,
                           what="the agent to enroll")
        device_id = devices[0].device_id
        wait_for(lambda: get(control, device_id).connected and get(control, device_id).detections_stored >= 10,
                 60, "detections from the agent")
        control.RevokeDevice(fleet_pb2.RevokeDeviceRequest(device_id=device_id, reason="test"), timeout=5)
        code = agent.wait(timeout=60)
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGKILL)
            agent.wait(10)
    assert code == 3, log.read_text()[-2000:]  # the device token refused: restarting cannot help
    assert "UNAUTHENTICATED" in log.read_text() and "was revoked" in log.read_text()
    after = get(control, device_id)
    assert after.revoked and not after.connected
    sequences = stored(control, device_id)
    assert len(sequences) >= 10 and sequences == sorted(set(sequences)), "each frame once, in order"
    assert sequences[-1] <= after.acked_sequence, "the data it sent before the revoke stays"


def test_a_source_that_yields_no_frame_exits_2_before_enrolling(controller, control, bundled_model, tmp_path):
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8 not a jpeg at all")
    proc = run_cli("edgefleet.agent.cli", "run", "--controller", controller.address, "--source", str(garbage),
                   "--state-dir", str(tmp_path / "agent"), "--enroll-key", "efk_test", "--model", str(bundled_model),
                   timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"source {str(garbage)!r} yields no frame" in proc.stderr
    assert list(control.ListDevices(fleet_pb2.ListDevicesRequest(), timeout=5).devices) == []
    assert not (tmp_path / "agent" / "identity.json").exists()
