"""A real controller on 127.0.0.1:0, called over a real channel."""
from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from edgefleet.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, types_pb2


def enroll(channel, key: str = "efk_test", hardware_id: str = "hw-1") -> agent_pb2.EnrollResponse:
    stub = agent_pb2_grpc.AgentGatewayStub(channel)
    return stub.Enroll(agent_pb2.EnrollRequest(enroll_key=key, hardware_id=hardware_id, hostname="cam-a"), timeout=5)


def batch(*sequences: int, label: str = "person") -> agent_pb2.DetectionBatch:
    return agent_pb2.DetectionBatch(frames=[
        types_pb2.FrameDetections(
            stream_id="cam0", sequence=s, frame_index=s - 1,
            detections=[types_pb2.Detection(track_id=1, class_id=0, label=label, score=0.9,
                                             box=types_pb2.Box(x1=1, y1=2, x2=30, y2=40))],
        )
        for s in sequences
    ])


def auth(token: str):
    return (("authorization", f"Bearer {token}"),)


def test_health_is_serving_and_reflection_lists_both_services(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "edgefleet.v1.AgentGateway", "edgefleet.v1.FleetControl"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    (reply,) = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in reply.list_services_response.service}
    assert {"edgefleet.v1.AgentGateway", "edgefleet.v1.FleetControl", "grpc.health.v1.Health"} <= names


def test_invalid_enroll_key_is_unauthenticated(channel):
    with pytest.raises(grpc.RpcError) as err:
        enroll(channel, key="efk_wrong")
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_publish_without_or_with_a_bad_token_is_unauthenticated(channel):
    stub = agent_pb2_grpc.AgentGatewayStub(channel)
    for metadata in ((), auth("efd_forged")):
        with pytest.raises(grpc.RpcError) as err:
            list(stub.PublishDetections(iter([batch(1)]), metadata=metadata, timeout=5))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_publish_acks_and_replays_are_idempotent(channel, control):
    device = enroll(channel)
    stub = agent_pb2_grpc.AgentGatewayStub(channel)
    acks = list(stub.PublishDetections(iter([batch(1, 2, 3), batch(4, 5)]), metadata=auth(device.device_token),
                                       timeout=5))
    assert [(a.acked_sequence, a.duplicates) for a in acks] == [(3, 0), (5, 0)]
    # the agent lost the acks and resends: stored once, counted as duplicates, acked again
    acks = list(stub.PublishDetections(iter([batch(4, 5, 6)]), metadata=auth(device.device_token), timeout=5))
    assert [(a.acked_sequence, a.duplicates) for a in acks] == [(6, 2)]
    stored = control.ListDetections(fleet_pb2.ListDetectionsRequest(device_id=device.device_id, limit=100), timeout=5)
    assert [f.sequence for f in stored.frames] == [1, 2, 3, 4, 5, 6]
    assert stored.total == 6
    assert {d.label for f in stored.frames for d in f.detections} == {"person"}


def test_session_hello_then_heartbeat_updates_the_device(channel, control):
    device = enroll(channel)
    stub = agent_pb2_grpc.AgentGatewayStub(channel)
    messages = [
        agent_pb2.AgentMessage(hello=agent_pb2.Hello(agent_version="9.9", streams=["cam0"],
                                                     profile=types_pb2.HardwareProfile(platform="rpi5"))),
        agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(seq=1, health=types_pb2.HealthSample(fps=12.5))),
    ]
    replies = list(stub.Session(iter(messages), metadata=auth(device.device_token), timeout=5))
    assert replies[0].accepted.device_id == device.device_id
    got = control.GetDevice(fleet_pb2.GetDeviceRequest(device_id=device.device_id), timeout=5)
    assert (got.agent_version, got.profile.platform, got.health.fps, list(got.streams)) == (
        "9.9", "rpi5", 12.5, ["cam0"])
    assert got.status == fleet_pb2.ONLINE


def test_session_must_start_with_hello(channel):
    device = enroll(channel)
    stub = agent_pb2_grpc.AgentGatewayStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Session(iter([agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(seq=1))]),
                          metadata=auth(device.device_token), timeout=5))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_device_and_rollout_are_not_found(control):
    with pytest.raises(grpc.RpcError) as err:
        control.GetDevice(fleet_pb2.GetDeviceRequest(device_id="nope"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        control.GetRollout(fleet_pb2.GetRolloutRequest(rollout_id="nope"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert list(control.ListRollouts(fleet_pb2.ListRolloutsRequest(), timeout=5).rollouts) == []


def test_watch_detections_streams_live_frames_with_filters(channel, control):
    import threading

    device = enroll(channel)
    watch = control.WatchDetections(fleet_pb2.WatchDetectionsRequest(labels=["car"], min_score=0.5), timeout=10)
    received = []
    reader = threading.Thread(target=lambda: received.extend(r for _, r in zip(range(2), watch)))
    reader.start()
    stub = agent_pb2_grpc.AgentGatewayStub(channel)
    # wait until the watcher is registered, then publish people (filtered out) and cars (kept)
    import time

    deadline = time.monotonic() + 5
    seq = 0
    while len(received) < 2 and time.monotonic() < deadline:
        seq += 2
        list(stub.PublishDetections(iter([batch(seq - 1, label="person"), batch(seq, label="car")]),
                                    metadata=auth(device.device_token), timeout=5))
        time.sleep(0.1)
    reader.join(5)
    watch.cancel()
    assert len(received) == 2
    assert all(r.frame.device_id == device.device_id for r in received)
    assert {d.label for r in received for d in r.frame.detections} == {"car"}
    assert all(r.frame.sequence % 2 == 0 for r in received)
    assert received[0].dropped == 0


def test_watch_detections_rejects_a_bad_min_score(control):
    with pytest.raises(grpc.RpcError) as err:
        list(control.WatchDetections(fleet_pb2.WatchDetectionsRequest(min_score=2.0), timeout=5))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "min_score" in err.value.details()


def mixed_batch(first: int, *, device_id: str = "", last_seen_s: int = 1_764_979_260) -> agent_pb2.DetectionBatch:
    """A frame, an object event, a count batch and a snapshot at sequences first..first+3."""
    from google.protobuf.timestamp_pb2 import Timestamp

    seen = Timestamp(seconds=last_seen_s)
    pb = batch(first)
    pb.objects.append(agent_pb2.ObjectEvent(sequence=first + 1, type="new", object=types_pb2.TrackedObject(
        object_id="cam0-7", device_id=device_id, stream_id="cam0", track_id=7, label="person", first_seen=seen,
        last_seen=seen, best_score=0.9, zones=["queue"])))
    pb.counts.append(agent_pb2.CountBatch(sequence=first + 2, rows=[types_pb2.CountRow(
        stream_id="cam0", minute=1_764_979_200, kind="line", name="door", label="person", direction="in", count=3)]))
    pb.snapshots.append(agent_pb2.SnapshotRecord(sequence=first + 3, snapshot=types_pb2.Snapshot(
        stream_id="cam0", object_id="cam0-7", kind="crop", label="person", time=seen, jpeg=b"\xff\xd8crop\xff\xd9")))
    return pb


def test_publish_stores_objects_counts_and_snapshots_exactly_once(controller, channel, control):
    from edgefleet.fleet.object_queries import CountQuery, ObjectQuery

    device = enroll(channel)
    stub = agent_pb2_grpc.AgentGatewayStub(channel)
    acks = list(stub.PublishDetections(iter([mixed_batch(1)]), metadata=auth(device.device_token), timeout=5))
    assert [(a.acked_sequence, a.duplicates) for a in acks] == [(4, 0)]
    # the acks were lost: the agent sends the same records again
    acks = list(stub.PublishDetections(iter([mixed_batch(1)]), metadata=auth(device.device_token), timeout=5))
    assert [(a.acked_sequence, a.duplicates) for a in acks] == [(4, 4)]
    db = controller.controller.db
    (obj,) = controller.run(db.list_objects(ObjectQuery()))
    assert (obj.device_id, obj.object_id, obj.zones, obj.has_snapshot) == (device.device_id, "cam0-7", ["queue"], True)
    (row,) = controller.run(db.count_objects(CountQuery()))
    assert (row.name, row.direction, row.count) == ("door", "in", 3)
    assert controller.run(db.get_snapshot("cam0-7")).jpeg == b"\xff\xd8crop\xff\xd9"
    stored = control.ListDetections(fleet_pb2.ListDetectionsRequest(device_id=device.device_id, limit=100), timeout=5)
    assert [f.sequence for f in stored.frames] == [1]


def test_publish_refuses_an_object_of_another_device_and_a_bad_time(channel):
    device = enroll(channel)
    stub = agent_pb2_grpc.AgentGatewayStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.PublishDetections(iter([mixed_batch(1, device_id="d-other")]), metadata=auth(device.device_token),
                                    timeout=5))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "d-other" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        list(stub.PublishDetections(iter([mixed_batch(1, last_seen_s=2**40)]), metadata=auth(device.device_token),
                                    timeout=5))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "object.first_seen" in err.value.details()


def test_with_store_frames_none_frames_are_acked_and_watched_but_not_stored(tmp_path):
    import threading

    from edgefleet.fleet.object_queries import ObjectQuery
    from edgefleet.fleet.object_rows import FramePolicy
    from edgefleet.v1 import fleet_pb2_grpc

    from ..conftest import ControllerThread, wait_for

    ctl = ControllerThread(tmp_path / "fleet.db", store_frames=FramePolicy.parse("none"))
    try:
        with grpc.insecure_channel(ctl.address) as channel:
            device = enroll(channel)
            control = fleet_pb2_grpc.FleetControlStub(channel)
            watch = control.WatchDetections(fleet_pb2.WatchDetectionsRequest(), metadata=auth(ctl.operator_token),
                                            timeout=10)
            received: list = []
            reader = threading.Thread(target=lambda: received.extend(r for _, r in zip(range(1), watch)))
            reader.start()
            stub = agent_pb2_grpc.AgentGatewayStub(channel)
            sequence = 0

            def publish() -> bool:
                nonlocal sequence
                list(stub.PublishDetections(iter([mixed_batch(sequence + 1)]), metadata=auth(device.device_token),
                                            timeout=5))
                sequence += 4
                return bool(received)

            wait_for(publish, timeout=5, what="a watched frame")
            reader.join(5)
            watch.cancel()
            assert received[0].frame.device_id == device.device_id
            stored = control.ListDetections(fleet_pb2.ListDetectionsRequest(device_id=device.device_id),
                                            metadata=auth(ctl.operator_token), timeout=5)
            assert list(stored.frames) == [] and stored.total == 0
        assert ctl.run(ctl.controller.db.get_device(device.device_id)).acked_sequence == sequence
        assert [o.object_id for o in ctl.run(ctl.controller.db.list_objects(ObjectQuery()))] == ["cam0-7"]
    finally:
        ctl.stop()
