"""Our ONNX Runtime decode of Ultralytics exports against Ultralytics' own predict, on real frames.

The model is yolov8n built from its yaml and exported once per session (tests/ultralytics_env.py):
a raw-head export and an NMS-in-graph export. Ultralytics runs the very same ONNX files with its
own letterbox, NMS and scaling; we run them with models.yolo. Frames: vtest.avi and bus.jpg.
Both sides use the full-size letterbox (Ultralytics' rect=False) and the same thresholds.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgefleet.models.backends import create_detector
from edgefleet.models.detections import Detections
from edgefleet.models.export import ExportMismatch, check_export

from .test_detector_parity import _sample, greedy_match, read_frames

pytestmark = pytest.mark.slow

VTEST_FRAMES = [0, 60, 120, 180]
FRAME_IDS = [f"vtest{i}" for i in VTEST_FRAMES] + ["bus"]
CONFIDENCE, IOU = 0.25, 0.45
MIN_IOU = 0.99
SCORE_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def frames(ultralytics_env) -> dict[str, np.ndarray]:
    import cv2
    from ultralytics.utils import ASSETS

    video = read_frames(_sample("vtest.avi"), VTEST_FRAMES)
    return {**{f"vtest{i}": video[i] for i in VTEST_FRAMES}, "bus": cv2.imread(str(ASSETS / "bus.jpg"))}


def detector(path, **options):
    return create_detector({"type": "onnxruntime", "model": path, "confidence_threshold": CONFIDENCE,
                            "iou_threshold": IOU, "intra_op_threads": 1, **options})


def ultralytics_predict(model, frame: np.ndarray, size: tuple[int, int]) -> Detections:
    result = model.predict(frame, imgsz=(size[1], size[0]), conf=CONFIDENCE, iou=IOU, rect=False, verbose=False)[0]
    boxes = result.boxes
    return Detections(boxes.xyxy.numpy(), boxes.conf.numpy(), boxes.cls.numpy().astype(np.int32))


def assert_same_detections(ours: Detections, reference: Detections, frame: np.ndarray) -> None:
    """Same count and classes, matched one to one with IoU >= MIN_IOU and scores within the tolerance."""
    # A score within the tolerance of the threshold may fall on either side in either pipeline.
    ours = ours[np.abs(ours.confidence - CONFIDENCE) >= SCORE_TOLERANCE]
    reference = reference[np.abs(reference.confidence - CONFIDENCE) >= SCORE_TOLERANCE]
    assert len(ours) == len(reference), f"{len(ours)} boxes, Ultralytics found {len(reference)}"
    assert sorted(ours.class_id.tolist()) == sorted(reference.class_id.tolist())
    pairs = greedy_match(ours.xyxy, ours.class_id, reference.xyxy, reference.class_id)
    assert len(pairs) == len(reference), "every box must match one of Ultralytics' boxes of its class"
    ious = np.array([iou for _, _, iou in pairs])
    deltas = np.array([abs(ours.confidence[i] - reference.confidence[j]) for i, j, _ in pairs])
    assert ious.min(initial=1.0) >= MIN_IOU, f"IoU down to {ious.min():.5f}"
    assert deltas.max(initial=0.0) < SCORE_TOLERANCE, f"scores differ by up to {deltas.max():.2e}"
    h, w = frame.shape[:2]  # source pixels, clipped to the frame
    assert ours.xyxy.min(initial=0) >= 0 and ours.xyxy[:, [0, 2]].max(initial=0) <= w
    assert ours.xyxy[:, [1, 3]].max(initial=0) <= h


@pytest.fixture(scope="module", params=["raw", "nms"])
def onnx_pair(request, ultralytics_models):
    """(our detector, Ultralytics' YOLO) on the same exported file."""
    from ultralytics import YOLO

    path = ultralytics_models.onnx if request.param == "raw" else ultralytics_models.onnx_nms
    ours = detector(path)
    assert ours.layout.head == ("ultralytics" if request.param == "raw" else "end2end")
    yield ours, YOLO(str(path), task="detect")
    ours.close()


@pytest.mark.parametrize("frame_id", FRAME_IDS)
def test_matches_ultralytics_predict_on_the_same_onnx(onnx_pair, frames, frame_id):
    ours, theirs = onnx_pair
    frame = frames[frame_id]
    mine = ours.detect(frame)
    assert len(mine) >= 5, "the test model should find boxes on every frame"
    assert_same_detections(mine, ultralytics_predict(theirs, frame, ours.input_size), frame)


def test_the_export_carries_names_and_sizes(ultralytics_models):
    with detector(ultralytics_models.onnx) as raw, detector(ultralytics_models.onnx_nms) as end2end:
        for det in (raw, end2end):
            assert det.names == ultralytics_models.names and det.names[0] == "person"
            assert det.input_size == (640, 640) and not det.layout.fixed_size
        assert (raw.layout.max_batch, end2end.layout.max_batch) == (None, 1)


def test_a_batch_gives_the_same_boxes_as_single_frames(ultralytics_models, frames):
    batch = [frames[i] for i in FRAME_IDS[:3]] + [frames["bus"]]
    for path in (ultralytics_models.onnx, ultralytics_models.onnx_nms):
        with detector(path) as det:
            for frame, batched in zip(batch, det.detect_batch(batch), strict=True):
                single = det.detect(frame)
                assert len(single) == len(batched)
                np.testing.assert_allclose(batched.xyxy, single.xyxy, atol=1e-2)


def test_ultralytics_backend_on_the_checkpoint_matches_onnxruntime(ultralytics_models, frames):
    """torch (Ultralytics' predict on the .pt) against ONNX Runtime + models.yolo on its export."""
    config = {"type": "ultralytics", "model": ultralytics_models.pt, "confidence_threshold": CONFIDENCE,
              "iou_threshold": IOU, "device": "cpu"}
    with create_detector(config) as theirs, detector(ultralytics_models.onnx) as ours:
        assert theirs.input_size == (640, 640) and theirs.names == ultralytics_models.names
        assert theirs.last_inference_ms > 0  # warmed up in the constructor
        picked = [frames["vtest0"], frames["bus"]]
        for frame, reference in zip(picked, theirs.detect_batch(picked), strict=True):
            assert_same_detections(ours.detect(frame), reference, frame)


def test_the_consistency_check_measures_a_good_export(ultralytics_models):
    result = check_export(ultralytics_models.onnx, ultralytics_models.pt)
    assert result.frames == 2
    assert result.max_box_diff_px < 0.05 and result.max_score_diff < 1e-4


def test_a_tampered_export_fails_the_consistency_check(ultralytics_models, tmp_path):
    model = onnx.load(str(ultralytics_models.onnx))
    # the last conv of the class branch at stride 8: every score there moves
    weight = next(i for i in model.graph.initializer if i.name.endswith(".cv3.0.2.weight"))
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(1.05), weight.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, tampered)
    with pytest.raises(ExportMismatch, match=r"differ by up to .* in scores \(tolerance 0.0001\)"):
        check_export(tampered, ultralytics_models.pt)
