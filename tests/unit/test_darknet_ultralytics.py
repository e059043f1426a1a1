"""The bundled yolov3-tiny re-shaped into Ultralytics' detect layout (models.darknet_ultralytics):
the same boxes as the Darknet heads, through our decoders, our detector and Ultralytics' predict.

Real COCO weights, real frames (vtest.avi and Ultralytics' bus.jpg). The model is converted once
per module; Ultralytics runs in the tests' offline environment (tests/ultralytics_env.py).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgefleet import models
from edgefleet.models.backends.onnxruntime import read_layout
from edgefleet.models.bundled import default_model
from edgefleet.models.darknet_ultralytics import OUTPUT, to_ultralytics_layout
from edgefleet.models.detections import Detections
from edgefleet.models.errors import UnsupportedModel
from edgefleet.models.metadata import ultralytics_metadata
from edgefleet.models.yolo import box_iou, decode_darknet, decode_ultralytics, letterbox

from ..conftest import bus_jpg, read_frames

pytestmark = pytest.mark.data  # the bundled model's weights and vtest.avi

VTEST_FRAMES = [0, 40, 80]
CONFIDENCE, IOU = 0.25, 0.45
BOX_TOLERANCE_PX = 0.5
SCORE_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def darknet() -> onnx.ModelProto:
    return onnx.load(str(default_model()))


@pytest.fixture(scope="module")
def converted(darknet, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("darknet-ultralytics") / "yolov3-tiny-ultralytics.onnx"
    onnx.save(to_ultralytics_layout(darknet), str(path))
    return path


@pytest.fixture(scope="module")
def frames(vtest) -> dict[str, np.ndarray]:
    found = {f"vtest{index}": frame for index, frame in read_frames(vtest, VTEST_FRAMES).items()}
    if bus_jpg() is not None:
        found["bus"] = cv2.imread(str(bus_jpg()))
    return found


def test_the_graph_has_one_fixed_ultralytics_output_and_metadata(darknet, converted):
    model = onnx.load(str(converted))
    onnx.checker.check_model(model)
    assert (model.ir_version, [(o.domain, o.version) for o in model.opset_import]) == (darknet.ir_version, [("", 13)])
    session = ort.InferenceSession(str(converted), providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [[1, 3, 416, 416]]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [(OUTPUT, [1, 84, 3 * 13 * 13 + 3 * 26 * 26])]

    meta = {p.key: p.value for p in model.metadata_props}
    info = ultralytics_metadata(meta)
    assert info["names"][:3] == ["person", "bicycle", "car"] and len(info["names"]) == 80
    assert (info["imgsz"], info["stride"], info["task"], info["batch"], info["end2end"]) == ((416, 416), 32, "detect",
                                                                                          1, False)
    assert info["args"] == {"batch": 1, "half": False, "int8": False, "dynamic": False, "nms": False}
    assert "format" not in meta and meta["darknet_format"] == "darknet-yolo"  # provenance, under a prefix
    layout = read_layout(meta, [1, 3, 416, 416], [[1, 84, 2535]])
    assert (layout.head, layout.input_size, layout.fixed_size, layout.max_batch) == ("ultralytics", (416, 416), True, 1)


def test_every_candidate_equals_decode_darknet_on_the_raw_heads(darknet, converted, frames):
    """All 2535 boxes, not only those above a threshold, in the same order (head, anchor, cell)."""
    meta = {p.key: p.value for p in darknet.metadata_props}
    raw = ort.InferenceSession(darknet.SerializeToString(), providers=["CPUExecutionProvider"])
    decoded = ort.InferenceSession(str(converted), providers=["CPUExecutionProvider"])
    layout = read_layout(meta, ["batch", 3, "height", "width"], [o.shape for o in raw.get_outputs()])
    tensor, _ = letterbox(frames["vtest0"], (416, 416))
    (ref_xyxy, ref_score, ref_class), = decode_darknet(raw.run(None, {"images": tensor}), layout.anchors,
                                                       layout.masks, (416, 416), -1.0)
    (xyxy, score, class_id), = decode_ultralytics(decoded.run(None, {"images": tensor})[0], (416, 416), -1.0)
    assert len(xyxy) == len(ref_xyxy) == 2535
    np.testing.assert_allclose(xyxy, ref_xyxy, atol=1e-3)
    np.testing.assert_allclose(score, ref_score, atol=1e-6)
    sure = ref_score > 0.01  # below, many class scores round to the same tiny float: argmax is a coin toss
    assert sure.sum() > 10 and (class_id[sure] == ref_class[sure]).all()


def test_our_detector_finds_the_same_objects_in_both_files(converted, frames):
    ours = models.load_detector(converted, confidence_threshold=CONFIDENCE, iou_threshold=IOU)
    reference = models.load_default_detector(confidence_threshold=CONFIDENCE, iou_threshold=IOU)
    assert ours.layout.head == "ultralytics" and reference.layout.head == "darknet"
    assert ours.names == reference.names
    try:
        for name, frame in frames.items():
            got, want = ours.detect(frame), reference.detect(frame)
            assert len(got) > 0 and len(got) == len(want), name
            # The same candidates in the same order: NMS keeps them in the same order too.
            assert got.class_id.tolist() == want.class_id.tolist(), name
            np.testing.assert_allclose(got.xyxy, want.xyxy, atol=BOX_TOLERANCE_PX, err_msg=name)
            np.testing.assert_allclose(got.confidence, want.confidence, atol=SCORE_TOLERANCE, err_msg=name)
        batch = ours.detect_batch(list(frames.values()))  # the fixed batch of 1 runs frame by frame
        assert [len(d) for d in batch] == [len(reference.detect(f)) for f in frames.values()]
    finally:
        ours.close()
        reference.close()


def test_other_input_sizes_and_models():
    path = default_model()
    model = onnx.load(str(path))
    small = to_ultralytics_layout(model, (320, 256))
    dims = [d.dim_value for d in small.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 256, 320]
    assert [d.dim_value for d in small.graph.output[0].type.tensor_type.shape.dim] == [1, 84, 3 * 10 * 8 + 3 * 20 * 16]
    assert {p.key: p.value for p in small.metadata_props}["imgsz"] == "[256, 320]"
    with pytest.raises(UnsupportedModel, match="not a multiple of the strides"):
        to_ultralytics_layout(model, (416, 400))
    del model.metadata_props[:]
    with pytest.raises(UnsupportedModel, match="not a models.darknet model"):
        to_ultralytics_layout(model)


def test_ultralytics_predict_finds_what_our_detector_finds(ultralytics_env, converted, frames):  # noqa: F811
    from ultralytics import YOLO

    if "bus" not in frames:
        pytest.skip("needs Ultralytics' bus.jpg")
    yolo = YOLO(str(converted), task="detect")
    detector = models.load_detector(converted, confidence_threshold=CONFIDENCE, iou_threshold=IOU)
    try:
        for name, frame in frames.items():
            result = yolo.predict(frame, imgsz=416, conf=CONFIDENCE, iou=IOU, verbose=False)[0]
            theirs = Detections(result.boxes.xyxy.numpy(), result.boxes.conf.numpy(), result.boxes.cls.numpy())
            ours = detector.detect(frame)
            assert len(ours) > 0 and sorted(theirs.class_id.tolist()) == sorted(ours.class_id.tolist()), name
            iou = box_iou(ours.xyxy, theirs.xyxy)
            iou[ours.class_id[:, None] != theirs.class_id[None, :]] = 0.0
            assert iou.max(axis=1).min() >= 0.99, (name, iou.max(axis=1))
            np.testing.assert_allclose(np.sort(theirs.confidence), np.sort(ours.confidence), atol=SCORE_TOLERANCE,
                                       err_msg=name)
    finally:
        detector.close()
    assert result.names[0] == "person" and len(result.names) == 80
    assert {0, 5} <= set(ours.class_id.tolist())  # bus.jpg, the last frame: people and the bus
