"""`edge-agent run --pace realtime` as a real process on a short generated video, against a real
controller: the frames' capture times span the video's duration; at --pace fast they do not."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgefleet.fleet.channel import open_channel
from edgefleet.v1 import fleet_pb2, fleet_pb2_grpc

from .test_agent_e2e import agent_run, summary_of

pytestmark = [pytest.mark.slow, pytest.mark.data]

FPS = 4.0
FRAMES = 16  # 3.75 s from the first frame to the last at 4 fps


def write_video(path) -> str:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (160, 120))
    assert writer.isOpened()
    for i in range(FRAMES):
        image = np.full((120, 160, 3), 90, np.uint8)
        cv2.rectangle(image, (5 + 5 * i, 30), (45 + 5 * i, 90), (40, 200, 40), -1)
        writer.write(image)
    writer.release()
    return str(path)


def capture_span(address: str, token: str, device_id: str) -> tuple[float, list[int]]:
    """(seconds from the first stored frame's capture time to the last's, the frame indices)."""
    with open_channel(address, token=token) as channel:
        stub = fleet_pb2_grpc.FleetControlStub(channel)
        frames = list(stub.ListDetections(
            fleet_pb2.ListDetectionsRequest(device_id=device_id, limit=1000), timeout=10).frames)
    frames.sort(key=lambda f: f.frame_index)
    times = [f.capture_time.ToNanoseconds() / 1e9 for f in frames]
    return times[-1] - times[0], [f.frame_index for f in frames]


def test_realtime_agent_plays_a_file_at_its_frame_rate(controller, tmp_path):
    video = write_video(tmp_path / "clip.avi")
    spans, played = {}, {}
    for pace in ("realtime", "fast"):
        proc = agent_run(controller.address, video, tmp_path / pace, "--enroll-key", "efk_test",
                         "--name", f"pace-{pace}", "--pace", pace,
                         "--detect-interval", "4")  # fast is then bound by decoding more than by detection
        summary = summary_of(proc)
        span, indices = capture_span(controller.address, controller.operator_token, summary["device_id"])
        assert indices == sorted(set(indices)) and indices[-1] == FRAMES - 1, f"{pace}: the last frame is delivered"
        assert summary["frames"] == len(indices)
        spans[pace], played[pace] = span, indices
    # frame i is delivered i/fps after frame 0: the span of the frames stored (a slow first detection may
    # drop the first few) is their index distance over the frame rate
    video_span = (played["realtime"][-1] - played["realtime"][0]) / FPS
    assert video_span > (FRAMES - 1) / FPS / 2, played
    assert spans["realtime"] == pytest.approx(video_span, rel=0.2), (spans, played)
    assert spans["realtime"] > 2 * spans["fast"], spans
