"""A real controller and a real agent process on the sample video."""
from __future__ import annotations

import json
from collections import defaultdict
from itertools import pairwise

import numpy as np
import pytest

from edgefleet.fleet.channel import open_channel
from edgefleet.models.yolo import box_iou
from edgefleet.v1 import fleet_pb2, fleet_pb2_grpc

from ..conftest import ControllerThread, first_frames, free_port, run_cli
from ..delivery import assert_frames_once

pytestmark = pytest.mark.slow


def agent_run(address: str, source, state_dir, *extra: str, timeout: float = 240):
    return run_cli(
        "edgefleet.agent.cli", "run", "--controller", address, "--source", str(source), "--state-dir", str(state_dir),
        *extra, timeout=timeout,
    )


def summary_of(proc) -> dict:
    assert proc.returncode == 0, f"agent failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def stored_frames(address: str, device_id: str, token: str) -> list:
    with open_channel(address, token=token) as channel:
        stub = fleet_pb2_grpc.FleetControlStub(channel)
        return list(stub.ListDetections(
            fleet_pb2.ListDetectionsRequest(device_id=device_id, limit=10_000), timeout=10).frames)


def tracks_of(frames: list) -> dict[int, list[tuple[int, np.ndarray, bool]]]:
    """track id -> [(frame index, xyxy, predicted)] in frame order."""
    tracks = defaultdict(list)
    for f in frames:
        for d in f.detections:
            tracks[d.track_id].append((f.frame_index, np.array([d.box.x1, d.box.y1, d.box.x2, d.box.y2]), d.predicted))
    return tracks


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(box_iou(a[None].astype(np.float32), b[None].astype(np.float32))[0, 0])


def test_agent_streams_vtest_detections_to_the_controller(controller, control, vtest, tmp_path):
    proc = agent_run(controller.address, vtest, tmp_path / "agent", "--enroll-key", "efk_test",
                     "--name", "e2e-cam", "--max-frames", "120")
    summary = summary_of(proc)
    assert summary["frames"] == 120
    assert summary["outbox_left"] == 0

    devices = control.ListDevices(fleet_pb2.ListDevicesRequest(), timeout=10).devices
    assert [d.hostname for d in devices] == ["e2e-cam"]
    device = devices[0]
    assert device.device_id == summary["device_id"]
    assert device.acked_sequence == summary["acked_sequence"] == summary["records"] > 120, "frames and objects"
    assert summary["objects"]["objects"] >= 3 and summary["objects"]["snapshots"] >= 3, summary["objects"]
    assert device.health.frames_total == 120  # the last heartbeat, sent on stop, has the final counts
    assert device.health.fps > 0 and device.health.inference_ms_p50 > 0

    frames = stored_frames(controller.address, device.device_id, controller.operator_token)
    assert_frames_once([f.sequence for f in frames], 120, device.acked_sequence)
    assert [f.frame_index for f in frames] == list(range(120))
    labels = {d.label for f in frames for d in f.detections}
    assert "person" in labels
    boxes = [d.box for f in frames for d in f.detections]
    assert all(0 <= b.x1 < b.x2 <= 768 and 0 <= b.y1 < b.y2 <= 576 for b in boxes), "boxes in source pixels"
    assert not any(d.predicted for f in frames for d in f.detections), "interval 1: every box is detected"

    # ByteTrack keeps one id on each person: unique per frame, counted from 1, long-lived, never
    # jumping to another object between consecutive frames
    for f in frames:
        ids = [d.track_id for d in f.detections]
        assert len(ids) == len(set(ids)), f"frame {f.frame_index}: an id twice"
    tracks = tracks_of(frames)
    assert sorted(tracks) == list(range(1, len(tracks) + 1)), "ids count from 1 in this stream, none skipped"
    spans = sorted((len(points) for points in tracks.values()), reverse=True)
    assert spans[2] >= 60, f"the people in view for the whole clip keep one id each: {spans}"
    assert sum(spans) >= 15 * len(tracks), f"ids are long-lived, not re-issued: {spans}"
    for track_id, points in tracks.items():
        for (t0, box0, _), (t1, box1, _) in pairwise(points):
            if t1 == t0 + 1:
                assert iou(box0, box1) > 0.2, f"track {track_id} jumped between frames {t0} and {t1}"


def test_records_go_out_in_one_message_per_commit_interval(vtest, tmp_path):
    """--commit-interval-s groups frames into one outbox commit and one PublishDetections message:
    60 s holds all 40 frames of a short run (and its objects' events) for the final commit, 0 commits
    every tick. Snapshots are off here: they are encoded after their object ends and commit later."""
    config = tmp_path / "agent.yaml"
    config.write_text("snapshots: {enabled: false}\n")
    ctl = ControllerThread(tmp_path / "fleet.db")
    histogram = ctl.controller.metrics.ack_latency  # one observation per batch the controller acked

    def batches() -> float:
        return next(s.value for s in histogram.samples() if s.suffix == "_count")

    try:
        counts = []
        for seconds in ("60", "0"):
            before = batches()
            summary = summary_of(agent_run(ctl.address, vtest, tmp_path / f"agent-{seconds}",
                                           "--enroll-key", "efk_test", "--max-frames", "40",
                                           "--commit-interval-s", seconds, "--config", str(config)))
            assert (summary["frames"], summary["outbox_left"]) == (40, 0)
            counts.append(batches() - before)
    finally:
        ctl.stop()
    assert counts[0] == 1
    assert counts[1] > 1


def test_unknown_source_is_a_clear_error(controller, tmp_path):
    proc = agent_run(controller.address, tmp_path / "missing.avi", tmp_path / "agent", "--enroll-key", "efk_test")
    assert proc.returncode == 2
    assert "no such file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_invalid_enroll_key_is_refused_without_a_traceback(controller, vtest, tmp_path):
    proc = agent_run(controller.address, vtest, tmp_path / "agent", "--enroll-key", "efk_wrong", "--max-frames", "5")
    assert proc.returncode == 3
    assert "enrollment refused" in proc.stderr and "UNAUTHENTICATED" in proc.stderr
    assert "unknown or revoked enrollment key" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreachable_controller_keeps_the_outbox_and_delivers_it_later(vtest, tmp_path):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there yet
    state = tmp_path / "agent"
    proc = agent_run(address, vtest, state, "--enroll-key", "efk_test", "--max-frames", "15",
                     "--drain-timeout", "2")
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])  # what the run did is reported all the same
    assert (summary["frames"], summary["acked_sequence"]) == (15, 0)
    assert summary["outbox_left"] >= 15, "the frames and their objects' records are kept"
    assert f"did not acknowledge {summary['outbox_left']} record(s)" in proc.stderr
    assert summary["fps"] > 0

    # The controller comes up on that port; the next run delivers the kept records first.
    ctl = ControllerThread(tmp_path / "fleet.db", listen=address)
    try:
        summary = summary_of(agent_run(address, vtest, state, "--enroll-key", "efk_test", "--max-frames", "5"))
        frames = stored_frames(address, summary["device_id"], ctl.operator_token)
        assert_frames_once([f.sequence for f in frames], 20, summary["acked_sequence"])
        assert [f.frame_index for f in frames] == list(range(15)) + list(range(5))
    finally:
        ctl.stop()


def test_streams_share_one_detector_and_each_has_its_own_tracker(controller, vtest, tmp_path):
    bikes = vtest.parent / "bikes.mp4"
    proc = agent_run(controller.address, vtest, tmp_path / "agent", "--source", str(bikes), "--source", str(vtest),
                     "--stream-id", "door", "--stream-id", "street", "--stream-id", "door-again",
                     "--enroll-key", "efk_test", "--max-frames", "30", "--detect-interval", "3")
    summary = summary_of(proc)
    assert summary["streams"] == {"door": 30, "street": 30, "door-again": 30}
    frames = stored_frames(controller.address, summary["device_id"], controller.operator_token)
    assert_frames_once([f.sequence for f in frames], 90, summary["acked_sequence"])  # one device-wide sequence
    by_stream = {stream: [f for f in frames if f.stream_id == stream] for stream in ("door", "street", "door-again")}
    for stream, own in by_stream.items():
        assert [f.frame_index for f in own] == list(range(30))
        for f in own:
            predicted = {d.predicted for d in f.detections}
            assert predicted <= {f.frame_index % 3 != 0}, f"{stream} {f.frame_index}: detected on every 3rd frame only"

    def track_rows(stream):
        return [(f.frame_index, d.track_id, d.predicted, round(d.box.x1), round(d.box.y1)) for f in by_stream[stream]
                for d in f.detections]

    # One tracker per stream: the same video in two streams gets the same ids, counted from 1
    assert track_rows("door") == track_rows("door-again")
    door = by_stream["door"]
    assert any(d.label == "person" for f in door for d in f.detections)
    tracks = tracks_of(door)
    assert sorted(tracks) == list(range(1, len(tracks) + 1))
    assert any(p for points in tracks.values() for _, _, p in points), "skipped frames carry predicted boxes"
    for track_id, points in tracks.items():
        assert not points[0][2], f"track {track_id} was detected before it was predicted"
        for (_, box0, _), (t1, box1, p1) in pairwise(points):
            if p1:
                assert iou(box0, box1) > 0.3, f"track {track_id}: the prediction on frame {t1} left the object"


@pytest.mark.parametrize(("interval", "rect"), [(1, False), (3, False), (1, True)])
def test_what_the_agent_stores_equals_a_plain_detect_and_track_loop(controller, vtest, tmp_path, interval, rect):
    """The loop's threads (reader, look-ahead letterboxing, outbox writer, link) change when the
    work is done, never what is found: the same boxes, scores, classes and track ids as detecting
    and tracking the same frames one by one in this process."""

    from edgefleet.agent.bytetrack import ByteTrack, ByteTrackConfig
    from edgefleet.agent.options import RunOptions
    from edgefleet.models import load_default_detector

    frames_n = 45
    summary = summary_of(agent_run(controller.address, vtest, tmp_path / "agent", "--enroll-key", "efk_test",
                                   "--max-frames", str(frames_n), "--detect-interval", str(interval),
                                   *(["--rect"] if rect else [])))
    stored = stored_frames(controller.address, summary["device_id"], controller.operator_token)
    assert [f.frame_index for f in stored] == list(range(frames_n))

    detector = load_default_detector(confidence_threshold=ByteTrackConfig().low_confidence_threshold, rect=rect)
    tracker, shown = ByteTrack(), RunOptions.publish_threshold
    try:
        for index, (frame, image) in enumerate(zip(stored, first_frames(vtest, frames_n), strict=True)):
            dets, predicted = tracker.step(detector.detect(image) if index % interval == 0 else None)
            keep = dets.confidence >= shown
            want = {t: (c, p, s, box) for t, c, p, s, box in zip(
                dets.tracker_id[keep].tolist(), dets.class_id[keep].tolist(), predicted[keep].tolist(),
                dets.confidence[keep].tolist(), dets.xyxy[keep].tolist())}
            got = {d.track_id: (d.class_id, d.predicted, d.score, [d.box.x1, d.box.y1, d.box.x2, d.box.y2])
                   for d in frame.detections}
            assert sorted(got) == sorted(want), f"frame {index}: track ids"
            for track_id, (class_id, was_predicted, score, box) in got.items():
                assert (class_id, was_predicted) == want[track_id][:2], f"frame {index}, track {track_id}"
                assert score == pytest.approx(want[track_id][2], abs=1e-4)  # stored to 5 decimals, sent as float32
                assert box == pytest.approx(want[track_id][3], abs=0.01)  # stored to 0.01 px
    finally:
        detector.close()
