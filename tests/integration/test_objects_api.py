"""ListObjects, CountObjects, GetSnapshot and GetFrame against a real controller, fed by simulated agents
through PublishDetections and answering CaptureFrame down their real Sessions."""
from __future__ import annotations

import hashlib

import grpc
import pytest

from edgefleet.common.records import CountRecord, CountRow, ObjectEventRecord, SnapshotRecord, TrackedObject
from edgefleet.fleet.channel import open_channel
from edgefleet.v1 import fleet_pb2, fleet_pb2_grpc

from ..conftest import wait_for
from ..tui.agents import SimAgent, noisy_picture, picture
from .test_replicas import connected_on, replica

MINUTE = 1_764_979_200  # 2025-12-06 00:00 UTC


def obj(i: int, stream: str = "cam0", label: str = "person", ended: bool = True, **extra) -> TrackedObject:
    first = MINUTE + 10 * i
    return TrackedObject(f"{first * 1000}-{i:06x}", stream, i, label, 0, float(first), first + 5.0, 0.5 + i / 100,
                         (10.0, 20.0, 50.0, 120.0), [(30.0, 120.0, first + 1.0)], frames=50, ended=ended, **extra)


@pytest.fixture
def agent(controller, control):
    """`agent("cam-a", ...)`: a simulated agent whose Session the controller holds (commands reach it)."""
    made = []

    def make(hostname: str, **kwargs) -> SimAgent:
        made.append(SimAgent(controller.address, hostname, **kwargs).connect())
        wait_for(lambda: connected_on(control, made[-1].device_id), 10, f"{hostname}'s Session")
        return made[-1]

    yield make
    for a in made:
        a.close()


def test_objects_come_newest_first_in_pages_that_join_up(agent, control):
    cam = agent("cam-a")
    cam.publish_records([ObjectEventRecord("end", obj(i, zones=["walkway"] if i % 2 else [])) for i in range(7)])
    seen, token, pages = [], "", 0
    while True:
        page = control.ListObjects(fleet_pb2.ListObjectsRequest(device_id=cam.device_id, limit=3, page_token=token),
                                   timeout=5)
        seen += [o.object_id for o in page.objects]
        pages, token = pages + 1, page.next_page_token
        if not token:
            break
    assert pages == 3 and seen == [obj(i).object_id for i in reversed(range(7))]
    zoned = control.ListObjects(fleet_pb2.ListObjectsRequest(zone="walkway"), timeout=5)
    assert [o.track_id for o in zoned.objects] == [5, 3, 1] and zoned.objects[0].device_id == cam.device_id


@pytest.mark.parametrize("request_, message", [
    (fleet_pb2.ListObjectsRequest(page_token="o1.garbage"), "page_token"),
    (fleet_pb2.ListObjectsRequest(limit=1001), "limit must be <= 1000"),
    (fleet_pb2.ListObjectsRequest(device_id="d", select="site=lab"), "not both"),
])
def test_bad_listings_are_invalid_argument_naming_the_field(control, request_, message):
    with pytest.raises(grpc.RpcError) as err:
        control.ListObjects(request_, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()


def test_an_unknown_device_is_not_found(control):
    with pytest.raises(grpc.RpcError) as err:
        control.ListObjects(fleet_pb2.ListObjectsRequest(device_id="nope"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def rows(*counts: tuple[str, int, str, int]) -> CountRecord:
    return CountRecord([CountRow(stream, MINUTE + minute * 60, "line", "door", "person", direction, n)
                        for stream, minute, direction, n in counts])


def test_counts_group_by_a_device_label_and_add_up_to_the_total(agent, control):
    a = agent("cam-a", labels={"site": "lab"})
    b = agent("cam-b", labels={"site": "lab"}, streams=("cam0", "cam1"))
    c = agent("cam-c")
    a.publish_records([rows(("cam0", 0, "in", 3), ("cam0", 61, "out", 1))])
    b.publish_records([rows(("cam0", 0, "in", 4), ("cam1", 2, "in", 2))])
    c.publish_records([rows(("cam0", 0, "in", 5))])
    by_site = control.CountObjects(fleet_pb2.CountObjectsRequest(group_by=["label:site"]), timeout=5)
    got = {(x.group, x.direction): x.count for x in by_site.buckets}
    assert got == {("", "in"): 5, ("lab", "in"): 9, ("lab", "out"): 1} and by_site.total == 15
    hourly = control.CountObjects(fleet_pb2.CountObjectsRequest(select="site=lab", bucket="hour",
                                                                group_by=["stream"], direction="in"), timeout=5)
    got = {(x.start.seconds, x.stream_id): x.count for x in hourly.buckets}
    assert got == {(MINUTE, "cam0"): 7, (MINUTE, "cam1"): 2} and hourly.total == 9
    since = fleet_pb2.CountObjectsRequest(device_id=a.device_id, group_by=["device"])
    since.since.FromSeconds(MINUTE + 3600)
    late = control.CountObjects(since, timeout=5)
    assert [(x.device_id, x.direction, x.count) for x in late.buckets] == [(a.device_id, "out", 1)]


def test_bad_count_requests_name_the_field(control):
    for request, message in ((fleet_pb2.CountObjectsRequest(group_by=["site"]), "group_by"),
                             (fleet_pb2.CountObjectsRequest(bucket="week"), "bucket")):
        with pytest.raises(grpc.RpcError) as err:
            control.CountObjects(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()


def test_a_snapshot_comes_back_with_its_sha256(agent, control):
    cam = agent("cam-a")
    o = obj(1, has_snapshot=True)
    jpeg = picture("cam0")
    cam.publish_records([ObjectEventRecord("end", o),
                         SnapshotRecord("cam0", o.object_id, "crop", "person", o.first_seen, jpeg, 0.9)])
    got = control.GetSnapshot(fleet_pb2.GetSnapshotRequest(object_id=o.object_id), timeout=5)
    assert (got.jpeg, got.sha256, got.device_id, got.kind) == (jpeg, hashlib.sha256(jpeg).hexdigest(),
                                                                 cam.device_id, "crop")
    for request, code in ((fleet_pb2.GetSnapshotRequest(object_id=o.object_id, kind="frame"), "NOT_FOUND"),
                          (fleet_pb2.GetSnapshotRequest(object_id="nope"), "NOT_FOUND"),
                          (fleet_pb2.GetSnapshotRequest(object_id=o.object_id, kind="big"), "INVALID_ARGUMENT")):
        with pytest.raises(grpc.RpcError) as err:
            control.GetSnapshot(request, timeout=5)
        assert err.value.code().name == code


def test_get_frame_of_a_device_without_a_session_is_unavailable(agent, control):
    cam = agent("cam-a")
    cam.disconnect()
    with pytest.raises(grpc.RpcError) as err:
        control.GetFrame(fleet_pb2.GetFrameRequest(device_id=cam.device_id), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"device {cam.device_id} is not connected" in err.value.details()


def test_get_frame_carries_the_devices_refusal_and_its_silence(agent, control):
    cam = agent("cam-a")
    with pytest.raises(grpc.RpcError) as err:
        control.GetFrame(fleet_pb2.GetFrameRequest(device_id=cam.device_id, stream_id="cam9"), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no stream 'cam9': this device has cam0" in err.value.details()
    cam.answer_captures = False
    with pytest.raises(grpc.RpcError) as err:
        control.GetFrame(fleet_pb2.GetFrameRequest(device_id=cam.device_id, timeout_ms=300), timeout=10)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "timed out after 0.3 s" in err.value.details()


def test_get_frame_answers_the_devices_picture(agent, control):
    cam = agent("cam-a", streams=("cam0", "cam1"))
    got = control.GetFrame(fleet_pb2.GetFrameRequest(device_id=cam.device_id, stream_id="cam1"), timeout=10)
    assert (got.device_id, got.stream_id, got.kind) == (cam.device_id, "cam1", "live")
    assert got.jpeg == picture("cam1") and got.sha256 == hashlib.sha256(got.jpeg).hexdigest()


# ---- across controller replicas (PostgreSQL): the device's Session on one, the operator on the other ----

@pytest.fixture
def two_replicas(pg_url, tmp_path):
    pair = replica(pg_url, tmp_path, "a"), replica(pg_url, tmp_path, "b")
    yield pair
    for ctl in pair:
        ctl.stop()


def _frame_across_replicas(two_replicas, stream: str) -> fleet_pb2.GetFrameRequest:
    a, b = two_replicas
    cam = SimAgent(b.address, "cam-far", streams=("cam0",))
    cam.scene = noisy_picture  # past a notification's 8,000 bytes: the answer goes through the relay table
    cam.connect()
    with open_channel(a.address, token=a.operator_token) as channel:
        control = fleet_pb2_grpc.FleetControlStub(channel)
        wait_for(lambda: connected_on(control, cam.device_id), 20, "the Session seen from the other replica")
        try:
            return control.GetFrame(fleet_pb2.GetFrameRequest(device_id=cam.device_id, stream_id=stream), timeout=20)
        finally:
            cam.close()


def test_a_refusal_to_capture_crosses_replicas(two_replicas):
    with pytest.raises(grpc.RpcError) as err:
        _frame_across_replicas(two_replicas, "cam9")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no stream 'cam9': this device has cam0" in err.value.details()


def test_a_frame_crosses_replicas(two_replicas):
    got = _frame_across_replicas(two_replicas, "cam0")
    assert got.jpeg == noisy_picture("cam0") and len(got.jpeg) > 20_000 and got.kind == "live"
