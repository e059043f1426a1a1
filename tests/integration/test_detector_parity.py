"""Our converter + ONNX Runtime + numpy post-processing against OpenCV 4.x's Darknet reader.

The golden file was produced by scripts/golden_opencv_darknet.py (independent code: its own
letterbox and decode, OpenCV's network and NMS) on the same weights and frames.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.tracker import iou_matrix
from models import load_default_detector

from ..conftest import samples_dir

SCORE_TOLERANCE = 1e-3
GOLDEN = Path(__file__).resolve().parent.parent / "data" / "golden" / "yolov3_tiny.json"


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def detector(golden):
    return load_default_detector(confidence_threshold=golden["confidence_threshold"],
                                 iou_threshold=golden["iou_threshold"])


def frames_of(video: Path, indices: list[int]) -> dict[int, np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    out, index = {}, 0
    while index <= max(indices):
        ok, frame = cap.read()
        assert ok, f"{video} ended before frame {index}"
        if index in indices:
            out[index] = frame
        index += 1
    return out


def cases():
    data = json.loads(GOLDEN.read_text())
    return [(video, entry) for video, entries in data["videos"].items() for entry in entries]


@pytest.mark.parametrize("video, entry", cases(), ids=lambda v: v if isinstance(v, str) else f"frame{v['index']}")
def test_matches_opencv_darknet_on_real_frames(detector, video, entry):
    path = samples_dir() / video
    assert path.exists(), f"{path} is missing: run `make samples`"
    frame = frames_of(path, [entry["index"]])[entry["index"]]
    assert hashlib.sha256(frame.tobytes()).hexdigest() == entry["sha256"], (
        "this OpenCV decodes the frame differently from the one that made the golden file; "
        "regenerate it with scripts/golden_opencv_darknet.py"
    )
    # A score within the tolerance of the threshold may fall on either side of it in either
    # implementation; such boxes are left out of the comparison on both sides.
    threshold = detector.confidence_threshold
    ours = detector.detect(frame)
    ours = ours[np.abs(ours.confidence - threshold) >= SCORE_TOLERANCE]
    expected = [d for d in entry["detections"] if abs(d["score"] - threshold) >= SCORE_TOLERANCE]
    assert len(ours) == len(expected)
    if not expected:
        return
    ref_xyxy = np.array([d["xyxy"] for d in expected], np.float32)
    ref_score = np.array([d["score"] for d in expected], np.float32)
    ref_class = np.array([d["class_id"] for d in expected], np.int32)
    iou = iou_matrix(ours.xyxy, ref_xyxy)
    iou[ours.class_id[:, None] != ref_class[None, :]] = 0
    match = iou.argmax(axis=1)
    assert sorted(match.tolist()) == list(range(len(expected))), "one-to-one match by class and IoU"
    assert iou[np.arange(len(ours)), match].min() >= 0.99
    assert np.abs(ours.confidence - ref_score[match]).max() < SCORE_TOLERANCE
    assert sorted(ours.class_id.tolist()) == sorted(ref_class.tolist())


def test_finds_people_in_vtest(detector, vtest):
    frames = frames_of(vtest, [0, 200, 400])
    labels = [label for f in frames.values() for label in detector.detect(f).labels(detector.names)]
    assert labels.count("person") >= 6


def test_batch_gives_the_same_result_as_single_frames(detector, vtest):
    frames = list(frames_of(vtest, [10, 20, 30]).values())
    batched = detector.detect_batch(frames)
    for frame, dets in zip(frames, batched):
        single = detector.detect(frame)
        assert len(single) == len(dets)
        np.testing.assert_allclose(single.xyxy, dets.xyxy, atol=1e-2)
        np.testing.assert_allclose(single.confidence, dets.confidence, atol=1e-4)
