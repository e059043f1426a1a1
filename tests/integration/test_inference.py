"""InferenceService on a real grpc.aio server on 127.0.0.1:0, with the real bundled detector on
real images (bus.jpg from the installed ultralytics package, vtest.avi frames); plumbing cases
(drops, auth) on a slow fake backend; and `edge-agent serve --controller` as a real process whose
served frames reach a real controller."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import cv2
import grpc
import numpy as np
import pytest

from edgefleet.agent.batcher import BatchConfig
from edgefleet.agent.bytetrack import ByteTrack, ByteTrackConfig
from edgefleet.agent.health import HealthMonitor
from edgefleet.agent.inference import InferenceCore, standalone_detect
from edgefleet.agent.inference_server import InferenceServer
from edgefleet.fleet.channel import open_channel
from edgefleet.models import Detections, load_default_detector
from edgefleet.v1 import fleet_pb2, fleet_pb2_grpc, inference_pb2, inference_pb2_grpc

from ..conftest import ROOT, bus_jpg, first_frames, wait_for

MAX_FRAME_BYTES = 4 << 20  # bus.jpg as raw pixels (2.6 MB) fits
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS.value[0]


def bus_jpeg() -> bytes:
    path = bus_jpg()
    assert path is not None, "bus.jpg comes with ultralytics (the test extra)"
    return path.read_bytes()


def jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


def serve(detect, names, **options) -> InferenceServer:
    token = options.pop("token", None)
    core = InferenceCore(detect, names, options.pop("batch", None), max_frame_bytes=MAX_FRAME_BYTES, **options)
    server = InferenceServer(core, "127.0.0.1:0", token=token)
    server.start()
    return server


@pytest.fixture(scope="module")
def detector():
    with load_default_detector(confidence_threshold=ByteTrackConfig().low_confidence_threshold) as d:
        yield d


@pytest.fixture(scope="module")
def server(detector):
    """The real detector behind the service, as `edge-agent serve` builds it without a controller."""
    health = HealthMonitor()
    srv = serve(standalone_detect(detector, health), lambda: detector.names, health=health,
                batch=BatchConfig(max_batch=8, window_s=0.005, max_waiting_per_key=64))
    yield srv
    srv.stop()


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield inference_pb2_grpc.InferenceServiceStub(channel)


def rows(dets: Detections, names) -> list[tuple]:
    return sorted(zip(dets.labels(names), dets.xyxy.tolist(), dets.confidence.tolist()))


def rows_pb(detections) -> list[tuple]:
    return sorted((d.label, [d.box.x1, d.box.y1, d.box.x2, d.box.y2], d.score) for d in detections)


def assert_same(served: list[tuple], local: list[tuple]):
    assert [r[0] for r in served] == [r[0] for r in local]
    for (_, box_s, score_s), (_, box_l, score_l) in zip(served, local):
        np.testing.assert_allclose(box_s, box_l, atol=1e-3)
        assert abs(score_s - score_l) < 1e-3


# ---- Detect ----

@pytest.mark.data  # the bundled detector
def test_detect_on_a_real_image_returns_what_the_local_detector_finds(stub):
    data = bus_jpeg()
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    with load_default_detector() as local:  # the default 0.25 threshold, as Detect answers
        expected = rows(local.detect(image), local.names)
    assert len(expected) >= 4 and "bus" in [r[0] for r in expected]

    encoded = stub.Detect(inference_pb2.DetectRequest(image=inference_pb2.Image(encoded=data)), timeout=30)
    assert (encoded.width, encoded.height) == (image.shape[1], image.shape[0])
    assert_same(rows_pb(encoded.detections), expected)

    raw = inference_pb2.RawImage(pixels=cv2.cvtColor(image, cv2.COLOR_BGR2RGB).tobytes(), width=image.shape[1],
                                 height=image.shape[0], format=inference_pb2.RawImage.RGB8)
    answered = stub.Detect(inference_pb2.DetectRequest(image=inference_pb2.Image(raw=raw)), timeout=30)
    assert_same(rows_pb(answered.detections), expected)
    assert all(d.track_id == 0 for d in answered.detections)


@pytest.mark.data  # the bundled detector
@pytest.mark.parametrize("image, message", [
    (inference_pb2.Image(encoded=b"\xff\xd8 not really a jpeg"), "decode as neither JPEG nor PNG"),
    (inference_pb2.Image(encoded=b"x" * (MAX_FRAME_BYTES + 1)),
     f"limit of {MAX_FRAME_BYTES} bytes (--max-frame-bytes)"),
    (inference_pb2.Image(), "image is empty"),
    (inference_pb2.Image(raw=inference_pb2.RawImage(pixels=b"\0" * 10, width=4, height=4,
                                                    format=inference_pb2.RawImage.BGR8)), "needs 48"),
])
def test_detect_refuses_a_bad_image_with_invalid_argument(stub, image, message):
    with pytest.raises(grpc.RpcError) as err:
        stub.Detect(inference_pb2.DetectRequest(image=image), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()


# ---- DetectStream ----

def stream_frame(stream_id: str, index: int, data: bytes) -> inference_pb2.StreamFrame:
    frame = inference_pb2.StreamFrame(stream_id=stream_id, frame_index=index, image=inference_pb2.Image(encoded=data))
    frame.capture_time.GetCurrentTime()
    return frame


@pytest.mark.data  # the bundled detector
def test_stream_track_ids_are_stable_and_counted_per_stream(stub, vtest, detector):
    images = first_frames(vtest, 16)
    encoded = [jpeg(image) for image in images]
    requests = [stream_frame(sid, i, data) for i, data in enumerate(encoded) for sid in ("left", "right")]
    results = list(stub.DetectStream(iter(requests), timeout=60))

    assert [(r.stream_id, r.frame_index) for r in results] == [(f.stream_id, f.frame_index) for f in requests]
    assert not any(r.HasField("error") for r in results)
    by_stream = {sid: [r for r in results if r.stream_id == sid] for sid in ("left", "right")}
    # each stream has its own tracker: the same frames give the same ids, each counting from 1
    ids = {sid: [[d.track_id for d in r.detections] for r in rs] for sid, rs in by_stream.items()}
    assert ids["left"] == ids["right"]
    seen = sorted({t for frame in ids["left"] for t in frame if t})
    assert seen and seen[0] == 1

    # the same detector and ByteTrack run locally on the decoded frames give the same tracks
    tracker = ByteTrack()
    decoded = [cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) for data in encoded]
    for local, served in zip(detector.detect_batch(decoded), by_stream["left"]):
        dets, _ = tracker.step(local)
        dets = dets[dets.confidence >= 0.25]
        assert sorted(np.maximum(dets.tracker_id, 0).tolist()) == sorted(d.track_id for d in served.detections)

    # stable: a person seen in consecutive frames keeps the id (boxes overlapping by IoU > 0.5)
    kept = changed = 0
    for before, after in zip(by_stream["left"], by_stream["left"][1:]):
        for d in after.detections:
            match = [p for p in before.detections if p.track_id and iou(p.box, d.box) > 0.5]
            if d.track_id and match:
                kept += match[0].track_id == d.track_id
                changed += match[0].track_id != d.track_id
    assert kept > 40 and changed <= kept * 0.05, (kept, changed)


def iou(a, b) -> float:
    w = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    h = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = w * h
    union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter
    return inter / union if union else 0.0


@pytest.mark.data  # the bundled detector
def test_an_oversize_or_undecodable_frame_gets_its_error_and_the_stream_continues(stub, vtest):
    good = [jpeg(image) for image in first_frames(vtest, 3)]
    requests = [
        stream_frame("door", 0, good[0]),
        stream_frame("door", 1, b"\0" * (MAX_FRAME_BYTES + 100)),   # over the limit (within the transport's)
        stream_frame("door", 2, good[1]),
        stream_frame("door", 3, b"GIF89a, not a frame"),
        stream_frame("", 4, good[2]),                                # no stream id
        stream_frame("door", 5, good[2]),
    ]
    results = list(stub.DetectStream(iter(requests), timeout=60))
    assert [r.frame_index for r in results] == [0, 1, 2, 3, 4, 5]
    errors = {r.frame_index: (r.error.code, r.error.message) for r in results if r.HasField("error")}
    assert set(errors) == {1, 3, 4}
    assert errors[1][0] == INVALID_ARGUMENT and f"limit of {MAX_FRAME_BYTES} bytes" in errors[1][1]
    assert errors[3][0] == INVALID_ARGUMENT and "decode" in errors[3][1]
    assert errors[4][0] == INVALID_ARGUMENT and "stream_id" in errors[4][1]
    assert all(r.width == 768 for r in results if r.frame_index in (0, 2, 5))
    assert results[-1].detections  # tracks confirmed over frames 0, 2 and 5


@pytest.mark.data  # the bundled detector
def test_a_stream_id_is_fed_by_one_call_at_a_time(server, stub, vtest):
    data = jpeg(first_frames(vtest, 1)[0])
    release = threading.Event()

    def first_call():
        yield stream_frame("gate", 0, data)
        release.wait(20)

    first = stub.DetectStream(first_call(), timeout=60)
    assert next(first).frame_index == 0  # "gate" is now claimed by the first call
    try:
        second = list(stub.DetectStream(iter([stream_frame("gate", 7, data), stream_frame("other", 8, data)]),
                                        timeout=30))
        assert second[0].error.code == ALREADY_EXISTS and "another call" in second[0].error.message
        assert not second[1].HasField("error")
    finally:
        release.set()
        assert list(first) == []
    assert not server.core.stream_health()  # both calls ended: no stream is held


# ---- plumbing on a slow fake backend ----

class SlowBackend:
    """A detector stand-in: `seconds` per batch, one empty Detections per frame."""
    names = ("thing",)

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.batches: list[int] = []

    def __call__(self, images):
        self.batches.append(len(images))
        time.sleep(self.seconds)
        return [Detections.empty() for _ in images]


def test_a_client_faster_than_the_detector_loses_its_oldest_frames_and_is_told(vtest):
    backend = SlowBackend(0.2)
    srv = serve(backend, lambda: backend.names, batch=BatchConfig(max_batch=4, window_s=0.0, max_waiting_per_key=1))
    data = jpeg(first_frames(vtest, 1)[0])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            results = list(stub.DetectStream(iter([stream_frame("fast", i, data) for i in range(12)]), timeout=30))
        assert [r.frame_index for r in results] == list(range(12))
        dropped = [r.frame_index for r in results if r.error.code == RESOURCE_EXHAUSTED]
        assert dropped and 11 not in dropped  # the newest frame is never the one dropped
        assert results[-1].dropped == len(dropped)
        assert all("dropped" in r.error.message for r in results if r.frame_index in dropped)
        assert srv.core.dropped_total() == len(dropped)
    finally:
        srv.stop()


def test_with_a_token_calls_without_it_are_unauthenticated():
    backend = SlowBackend(0.0)
    srv = serve(backend, lambda: backend.names, token="s3cret")
    image = jpeg(np.zeros((60, 810, 3), np.uint8))
    request = inference_pb2.DetectRequest(image=inference_pb2.Image(encoded=image))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            for metadata in (None, (("authorization", "Bearer wrong"),)):
                with pytest.raises(grpc.RpcError) as err:
                    stub.Detect(request, metadata=metadata, timeout=10)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as err:
                list(stub.DetectStream(iter([stream_frame("a", 0, image)]), timeout=10))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            answer = stub.Detect(request, metadata=(("authorization", "Bearer s3cret"),), timeout=10)
            assert answer.width == 810
    finally:
        srv.stop()


# ---- edge-agent serve --controller: served frames reach the controller ----

def test_served_frames_reach_the_controller_through_the_agents_outbox(controller, vtest, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.agent.cli", "--log-level", "warning", "serve", "--listen", "127.0.0.1:0",
         "--controller", controller.address, "--state-dir", str(tmp_path / "agent"), "--enroll-key", "efk_test",
         "--stream-queue", "64"],  # the test sends all frames at once: none may be dropped
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ),
    )
    try:
        first = proc.stdout.readline()
        assert first, proc.stderr.read()[-3000:]
        address = json.loads(first)["serving"]
        frames = [jpeg(image) for image in first_frames(vtest, 20)]
        more: queue.Queue = queue.Queue()

        def requests():
            for i, data in enumerate(frames):
                yield stream_frame("door", i, data)
            more.get(timeout=30)  # keep the call (and the stream) open until the health shows it

        with open_channel(controller.address, token=controller.operator_token) as ch:
            control = fleet_pb2_grpc.FleetControlStub(ch)
            with grpc.insecure_channel(address) as channel:
                call = inference_pb2_grpc.InferenceServiceStub(channel).DetectStream(requests(), timeout=60)
                results = [next(call) for _ in frames]

                def served_stream_in_health():
                    devices = control.ListDevices(fleet_pb2.ListDevicesRequest(), timeout=10).devices
                    return devices and [s for s in devices[0].health.streams
                                        if s.stream_id == "door" and s.frames == 20]

                shown = wait_for(served_stream_in_health, 20, "the served stream in the device's health")
                assert shown[0].source.startswith("grpc:") and shown[0].dropped == 0
                more.put(None)
                assert list(call) == []
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err[-3000:]
            summary = json.loads(out.strip().splitlines()[-1])
            assert summary["frames"] == 20 and summary["served_frames"] == 20 and summary["outbox_left"] == 0
            stored = list(control.ListDetections(fleet_pb2.ListDetectionsRequest(
                device_id=summary["device_id"], limit=100), timeout=10).frames)
        assert [(f.stream_id, f.frame_index) for f in stored] == [("door", i) for i in range(20)]
        served_ids = [sorted(d.track_id for d in r.detections) for r in results]
        stored_ids = [sorted(d.track_id for d in f.detections) for f in stored]
        assert served_ids == stored_ids and any(served_ids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
