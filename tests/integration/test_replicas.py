"""Two controller replicas on one PostgreSQL database: a device's Session on one, the operator on the other.

Each replica is a real Controller serving on 127.0.0.1:0 (tests/conftest.py ControllerThread); the
device is a Session the test drives (tests/integration/test_commands.py AnsweringSession), so what
crosses between replicas is exactly what the test sends. Real agents and killed replicas are in
tests/integration/test_failover.py.
"""
from __future__ import annotations

import queue
import threading
import time

import grpc
import pytest

from edgefleet.fleet.channel import open_channel
from edgefleet.fleet.rollouts import RolloutOptions
from edgefleet.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, fleet_pb2_grpc, types_pb2

from ..conftest import ControllerThread, wait_for
from .test_commands import AnsweringSession, done
from .test_gateway import auth, batch, enroll


def replica(url: str, tmp_path, name: str) -> ControllerThread:
    options = RolloutOptions(signing_key=tmp_path / "signing-key.pem", artifacts_dir=tmp_path / f"cache-{name}")
    return ControllerThread(url, rollout_options=options)


@pytest.fixture
def replicas(pg_url, tmp_path):
    a = replica(pg_url, tmp_path, "a")
    b = replica(pg_url, tmp_path, "b")
    yield a, b
    for ctl in (a, b):
        if ctl.controller.server is not None:
            ctl.stop()


def control_of(ctl: ControllerThread) -> fleet_pb2_grpc.FleetControlStub:
    return fleet_pb2_grpc.FleetControlStub(open_channel(ctl.address, token=ctl.operator_token))


def collect(stream, keep) -> None:
    """Read a server stream into `keep` until the test cancels it."""
    try:
        for item in stream:
            keep(item)
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.CANCELLED:
            raise


def connected_on(control, device_id: str) -> bool:
    return control.GetDevice(fleet_pb2.GetDeviceRequest(device_id=device_id), timeout=5).connected


def test_a_command_sent_to_one_replica_reaches_a_device_on_the_other(replicas):
    a, b = replicas
    channel_b = grpc.insecure_channel(b.address)
    device = enroll(channel_b)
    session = AnsweringSession(channel_b, device.device_token, done)
    control_a = control_of(a)
    try:
        wait_for(lambda: connected_on(control_a, device.device_id), 5, "replica A to know the device's Session on B")
        reply = control_a.SendCommand(fleet_pb2.SendCommandRequest(device_id=device.device_id, ping=True,
                                                                   timeout_ms=5000), timeout=10)
        (outcome,) = reply.outcomes
        assert (outcome.state, outcome.detail) == (fleet_pb2.DONE, "did it"), outcome
        assert [c.WhichOneof("action") for c in session.commands] == ["ping"]
        on_a, on_b = (c.GetDevice(fleet_pb2.GetDeviceRequest(device_id=device.device_id), timeout=5)
                      for c in (control_a, control_of(b)))
        assert (on_a.status, on_a.connected) == (on_b.status, on_b.connected) == (fleet_pb2.ONLINE, True)
    finally:
        session.close()
    wait_for(lambda: not connected_on(control_a, device.device_id), 5, "replica A to see the Session end")
    reply = control_a.SendCommand(fleet_pb2.SendCommandRequest(device_id=device.device_id, ping=True,
                                                               timeout_ms=500), timeout=10)
    assert reply.outcomes[0].state == fleet_pb2.NOT_CONNECTED


def test_watch_fleet_on_one_replica_shows_a_device_connecting_to_the_other_within_a_second(replicas):
    a, b = replicas
    channel_b = grpc.insecure_channel(b.address)
    device = enroll(channel_b)
    seen: list[tuple[float, fleet_pb2.FleetEvent]] = []
    watch = control_of(a).WatchFleet(fleet_pb2.WatchFleetRequest(), timeout=30)
    threading.Thread(target=collect, args=(watch, lambda e: seen.append((time.monotonic(), e))), daemon=True).start()
    wait_for(lambda: seen, 5, "the watch's first snapshot")
    opened = time.monotonic()
    session = AnsweringSession(channel_b, device.device_token, done)
    try:
        def connected_event():
            return next((t for t, e in seen if e.WhichOneof("body") == "device" and e.device.device_id ==
                         device.device_id and e.device.connected), None)

        at = wait_for(connected_event, 5, "the device's connection, seen on replica A")
        assert at - opened < 1.0
    finally:
        session.close()
        watch.cancel()


def test_watch_detections_on_one_replica_gets_frames_committed_on_the_other(replicas):
    a, b = replicas
    channel_b = grpc.insecure_channel(b.address)
    device = enroll(channel_b)
    got: list[int] = []
    watch = control_of(a).WatchDetections(fleet_pb2.WatchDetectionsRequest(device_id=device.device_id), timeout=30)
    threading.Thread(target=collect, args=(watch, lambda r: got.append(r.frame.sequence)),
                     daemon=True).start()
    wait_for(lambda: b.controller.peers.replica.wants("detections", time.time(), 15), 5,
             "replica B to hear that A watches detections")  # frames committed before that are not A's to see
    gateway_b = agent_pb2_grpc.AgentGatewayStub(channel_b)
    acks = list(gateway_b.PublishDetections(iter([batch(1, 2, 3), batch(4, 5)]),
                                            metadata=auth(device.device_token), timeout=10))
    assert acks[-1].acked_sequence == 5
    try:
        wait_for(lambda: sorted(got) == [1, 2, 3, 4, 5], 5, "the frames on replica A's watch, each once")
    finally:
        watch.cancel()


def test_revoking_on_one_replica_ends_the_devices_session_on_the_other(replicas):
    a, b = replicas
    channel_b = grpc.insecure_channel(b.address)
    device = enroll(channel_b)
    session = AnsweringSession(channel_b, device.device_token, done)
    control_a = control_of(a)
    wait_for(lambda: connected_on(control_a, device.device_id), 5, "the Session on B")
    control_a.RevokeDevice(fleet_pb2.RevokeDeviceRequest(device_id=device.device_id, reason="stolen"), timeout=10)
    wait_for(lambda: not connected_on(control_a, device.device_id), 5, "B to end the revoked device's Session")
    session.close()


def test_one_replica_leads_and_another_takes_over_when_it_stops(replicas):
    a, b = replicas
    wait_for(lambda: a.controller.peers.leader or b.controller.peers.leader, 10, "a leader")
    assert a.controller.peers.leader != b.controller.peers.leader
    leader, other = (a, b) if a.controller.peers.leader else (b, a)
    stopped = time.monotonic()
    leader.stop()
    wait_for(lambda: other.controller.peers.leader, 10, "the other replica to lead")
    assert time.monotonic() - stopped < 5


def test_heartbeats_on_one_replica_reach_a_fleet_watch_on_the_other_in_batches(replicas):
    a, b = replicas
    channel_b = grpc.insecure_channel(b.address)
    device = enroll(channel_b)
    seen: list[fleet_pb2.FleetEvent] = []
    watch = control_of(a).WatchFleet(fleet_pb2.WatchFleetRequest(), timeout=30)
    threading.Thread(target=collect, args=(watch, seen.append), daemon=True).start()
    wait_for(lambda: b.controller.peers.replica.wants("fleet", time.time(), 15), 5,
             "replica B to hear that A watches the fleet")
    up: queue.Queue = queue.Queue()
    up.put(agent_pb2.AgentMessage(hello=agent_pb2.Hello(agent_version="test", streams=["cam0"])))
    session = agent_pb2_grpc.AgentGatewayStub(channel_b).Session(iter(up.get, None),
                                                                 metadata=auth(device.device_token), timeout=30)
    threading.Thread(target=collect, args=(session, lambda _: None), daemon=True).start()
    try:
        for n in range(1, 4):
            up.put(agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(seq=n, health=types_pb2.HealthSample(
                fps=10.0 * n))))

        def fps_seen():
            return {round(e.device.health.fps) for e in seen if e.WhichOneof("body") == "device"
                    and e.device.device_id == device.device_id}

        wait_for(lambda: 30 in fps_seen(), 5, "the last heartbeat's health on replica A's watch")
    finally:
        up.put(None)
        watch.cancel()
