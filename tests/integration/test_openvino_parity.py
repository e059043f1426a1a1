"""The openvino backend against the onnxruntime backend on real frames, with the bundled model:
FP32 box for box (IoU >= 0.99, scores within 1e-3), and an INT8 IR quantized on 32 vtest.avi
frames agreeing with FP32 on other frames (same-class IoU >= 0.5 matches: F1, mean IoU)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgefleet.models.backends import create_detector
from edgefleet.models.detections import Detections
from edgefleet.models.openvino_quantize import quantize

from ..conftest import read_frames
from .test_detector_parity import greedy_match

pytestmark = [pytest.mark.slow, pytest.mark.data]

PARITY_FRAMES = list(range(0, 795, 53))  # 15 frames across the video
CALIBRATION_FRAMES = list(range(0, 320, 10))  # 32
HELD_OUT_FRAMES = list(range(325, 795, 25))  # 19 frames calibration never saw
MIN_IOU, SCORE_TOLERANCE = 0.99, 1e-3
THRESHOLD = 0.25


def bus_jpg() -> np.ndarray | None:
    """Ultralytics' bus.jpg from the installed package (the train extra), without importing it."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or spec.origin is None:
        return None
    return cv2.imread(str(Path(spec.origin).parent / "assets" / "bus.jpg"))


@pytest.fixture(scope="module")
def frames(vtest) -> dict[str, np.ndarray]:
    video = read_frames(vtest, sorted({*PARITY_FRAMES, *CALIBRATION_FRAMES, *HELD_OUT_FRAMES}))
    found = {f"vtest{i}": frame for i, frame in video.items()}
    bus = bus_jpg()
    if bus is not None:
        found["bus"] = bus
    return found


def away_from_threshold(dets: Detections) -> Detections:
    """A score within the tolerance of the threshold may fall on either side of it in either runtime."""
    return dets[np.abs(dets.confidence - THRESHOLD) >= SCORE_TOLERANCE]


@pytest.mark.parametrize("size", [320, 416])
def test_fp32_boxes_equal_onnxruntimes_one_to_one(bundled_model, frames, size):
    options = {"model": bundled_model, "input_size": (size, size), "confidence_threshold": THRESHOLD}
    reference = create_detector({"type": "onnxruntime", **options})
    detector = create_detector({"type": "openvino", **options})
    names = [n for n in frames if n == "bus" or int(n[5:]) in PARITY_FRAMES]
    batches = [names[i:i + 4] for i in range(0, len(names), 4)]  # batched calls, as the agent makes them
    worst_iou, worst_score, boxes = 1.0, 0.0, 0
    for batch in batches:
        pictures = [frames[n] for n in batch]
        for name, ours, theirs in zip(batch, detector.detect_batch(pictures), reference.detect_batch(pictures),
                                      strict=True):
            ours, theirs = away_from_threshold(ours), away_from_threshold(theirs)
            pairs = greedy_match(ours.xyxy, ours.class_id, theirs.xyxy, theirs.class_id)
            assert len(pairs) == len(ours) == len(theirs), f"{name}: {len(ours)} boxes against {len(theirs)}"
            for i, j, iou in pairs:
                assert iou >= MIN_IOU, f"{name}: box {i} IoU {iou:.4f} with onnxruntime's"
                assert abs(ours.confidence[i] - theirs.confidence[j]) < SCORE_TOLERANCE, name
                worst_iou = min(worst_iou, iou)
                worst_score = max(worst_score, abs(float(ours.confidence[i] - theirs.confidence[j])))
            boxes += len(pairs)
    assert boxes > 5 * len(names)  # vtest.avi is a street full of people
    print(f"\nopenvino vs onnxruntime at {size}: {boxes} boxes on {len(names)} frames, "
          f"min IoU {worst_iou:.6f}, max |score delta| {worst_score:.2e}")


def agreement(ours: list[Detections], reference: list[Detections]) -> tuple[float, float]:
    """F1 and mean IoU of same-class IoU >= 0.5 one-to-one matches, over all frames."""
    matched, found, expected, ious = 0, 0, 0, []
    for a, b in zip(ours, reference, strict=True):
        pairs = [p for p in greedy_match(a.xyxy, a.class_id, b.xyxy, b.class_id) if p[2] >= 0.5]
        matched, found, expected = matched + len(pairs), found + len(a), expected + len(b)
        ious += [iou for _, _, iou in pairs]
    return 2 * matched / (found + expected), float(np.mean(ious))


def test_int8_ir_agrees_with_fp32_on_frames_it_was_not_calibrated_on(bundled_model, frames, tmp_path):
    calls: list[tuple[int, int]] = []
    calibration = [frames[f"vtest{i}"] for i in CALIBRATION_FRAMES]
    xml = quantize(bundled_model, calibration, tmp_path / "out", input_size=(416, 416),
                   progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (32, 32) and len(calls) == 32
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"{bundled_model.stem}-int8.bin", f"{bundled_model.stem}-int8.xml"]
    assert "FakeQuantize" in xml.read_text()  # quantized, not a float copy
    int8 = create_detector({"type": "openvino", "model": xml})
    fp32 = create_detector({"type": "openvino", "model": bundled_model})
    assert int8.names == fp32.names and int8.input_size == (416, 416)
    held_out = [frames[f"vtest{i}"] for i in HELD_OUT_FRAMES]
    f1, mean_iou = agreement(int8.detect_batch(held_out), fp32.detect_batch(held_out))
    print(f"\nINT8 vs FP32 on {len(held_out)} held-out frames: F1 {f1:.3f}, mean IoU {mean_iou:.3f}")
    assert f1 >= 0.9 and mean_iou >= 0.9
