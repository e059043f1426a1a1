"""Our converter + ONNX Runtime + numpy post-processing against OpenCV 4.x's Darknet reader.

tests/data/golden/yolov3_tiny_vtest.json was written by scripts/golden_opencv_darknet.py:
independent code (its own letterbox and decode, OpenCV's network and NMS) on the same weights
and frames, with the same conventions and thresholds. Regenerate it with the command in that
script's docstring.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgefleet.models import load_default_detector
from edgefleet.models.yolo import box_iou, greedy_pairs

from ..conftest import read_frames

pytestmark = pytest.mark.data  # the bundled model's weights and vtest.avi

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "golden" / "yolov3_tiny_vtest.json"
GOLDEN_DATA = json.loads(GOLDEN.read_text())
FRAME_INDICES = sorted(int(i) for i in GOLDEN_DATA["frames"])
MIN_IOU = 0.99
SCORE_TOLERANCE = 1e-3


def _sample(name: str) -> Path:
    """A sample video from $EDGEFLEET_SAMPLES (default var/samples), else /tmp; missing fails."""
    folder = Path(os.environ.get("EDGEFLEET_SAMPLES", ROOT / "var" / "samples"))
    for path in (folder / name, Path("/tmp") / name):
        if path.is_file():
            return path
    pytest.fail(f"sample video {name} is in neither {folder} nor /tmp: run `make samples`")


def greedy_match(ours_xyxy, ours_class, ref_xyxy, ref_class) -> list[tuple[int, int, float]]:
    """Pairs (ours, reference, IoU), best IoU first, each box used once, classes equal."""
    iou = box_iou(ours_xyxy, ref_xyxy)
    iou[ours_class[:, None] != ref_class[None, :]] = 0.0
    return [(i, j, float(iou[i, j])) for i, j in greedy_pairs(iou)]


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    det = load_default_detector(cache_dir=tmp_path_factory.mktemp("models"),
                                confidence_threshold=GOLDEN_DATA["confidence_threshold"],
                                iou_threshold=GOLDEN_DATA["iou_threshold"])
    assert det.input_size == tuple(GOLDEN_DATA["input_size"])
    yield det
    det.close()


@pytest.fixture(scope="module")
def vtest_frames() -> dict[int, np.ndarray]:
    return read_frames(_sample(GOLDEN_DATA["video"]), FRAME_INDICES)


@pytest.mark.parametrize("index", FRAME_INDICES, ids=lambda i: f"frame{i}")
def test_matches_opencv_darknet_on_real_frames(detector, vtest_frames, index):
    golden = GOLDEN_DATA["frames"][str(index)]
    frame = vtest_frames[index]
    assert hashlib.sha256(frame.tobytes()).hexdigest() == golden["sha256"], (
        f"OpenCV {cv2.__version__} decodes frame {index} differently from OpenCV {GOLDEN_DATA['opencv']}, "
        "which made the golden file: the comparison would be meaningless. Regenerate it with "
        "scripts/golden_opencv_darknet.py (see its docstring)."
    )
    # A score within the tolerance of the threshold may fall on either side of it in either
    # implementation; such boxes are left out of the comparison on both sides.
    threshold = detector.confidence_threshold
    ours = detector.detect(frame)
    ours = ours[np.abs(ours.confidence - threshold) >= SCORE_TOLERANCE]
    expected = [d for d in golden["detections"] if abs(d["score"] - threshold) >= SCORE_TOLERANCE]
    ref_xyxy = np.array([d["xyxy"] for d in expected], np.float32).reshape(-1, 4)
    ref_score = np.array([d["score"] for d in expected], np.float32)
    ref_class = np.array([d["class_id"] for d in expected], np.int32)

    assert len(ours) == len(expected), f"{len(ours)} boxes, OpenCV found {len(expected)}"
    assert sorted(ours.class_id.tolist()) == sorted(ref_class.tolist())
    pairs = greedy_match(ours.xyxy, ours.class_id, ref_xyxy, ref_class)
    assert len(pairs) == len(expected), "every box must match one OpenCV box of its class"
    ious = np.array([iou for _, _, iou in pairs])
    score_delta = np.array([abs(ours.confidence[i] - ref_score[j]) for i, j, _ in pairs])
    assert ious.min(initial=1.0) >= MIN_IOU, f"IoU with OpenCV's boxes down to {ious.min():.5f}"
    assert score_delta.max(initial=0.0) < SCORE_TOLERANCE, f"scores differ by up to {score_delta.max():.2e}"


def test_finds_people_in_every_vtest_frame(detector, vtest_frames):
    for index, frame in vtest_frames.items():
        labels = detector.detect(frame).labels(detector.names)
        assert labels.count("person") >= 3, f"frame {index}: {labels}"


def test_a_batch_gives_the_same_boxes_as_single_frames(detector, vtest_frames):
    frames = [vtest_frames[i] for i in FRAME_INDICES[:4]]
    batched = detector.detect_batch(frames)
    for frame, dets in zip(frames, batched, strict=True):
        single = detector.detect(frame)
        assert len(single) == len(dets)
        np.testing.assert_allclose(dets.xyxy, single.xyxy, atol=1e-2)
        np.testing.assert_allclose(dets.confidence, single.confidence, atol=1e-4)
