"""Anchor-free and end-to-end decoders, Ultralytics layout dispatch on ONNX Runtime, the ultralytics
backend's config and torchvision check, and the tests' torchvision NMS shim. Models are tiny graphs
built here with known outputs."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.models.backends import create_detector, parse_config
from edgefleet.models.backends.onnxruntime import read_layout, ultralytics_metadata
from edgefleet.models.backends.ultralytics import UltralyticsConfig
from edgefleet.models.errors import BackendUnavailable, InvalidConfig, UnsupportedModel
from edgefleet.models.yolo import box_iou, decode_end2end, decode_ultralytics, nms


def raw_head(anchors: list[tuple[float, float, float, float, list[float]]], batch: int = 1,
             image: int = 0) -> np.ndarray:
    """(batch, 4 + nc, A): anchor i of `image` is (cx, cy, w, h, class scores); other images score 0."""
    nc = len(anchors[0][4])
    out = np.zeros((batch, 4 + nc, len(anchors)), np.float32)
    for a, (cx, cy, w, h, scores) in enumerate(anchors):
        out[image, :, a] = [cx, cy, w, h, *scores]
    return out


# ---- decode_ultralytics ----

@pytest.mark.parametrize(
    "anchor, expected_xyxy, expected_class",
    [
        ((16, 16, 8, 8, [0.9, 0.1, 0.0]), [12, 12, 20, 20], 0),
        ((10, 20, 4, 30, [0.2, 0.3, 0.7]), [8, 5, 12, 35], 2),      # best class wins
        ((0, 0, 10, 6, [0.0, 0.5, 0.0]), [-5, -3, 5, 3], 1),         # off the canvas: not clipped here
    ],
)
def test_decode_ultralytics_converts_cxcywh_of_the_best_class(anchor, expected_xyxy, expected_class):
    (xyxy, score, class_id), = decode_ultralytics(raw_head([anchor, (1, 1, 1, 1, [0.1, 0.1, 0.1])]), (64, 64))
    assert xyxy.tolist() == [expected_xyxy]
    assert score.tolist() == [pytest.approx(max(anchor[4]))] and class_id.tolist() == [expected_class]
    assert (xyxy.dtype, score.dtype, class_id.dtype) == (np.float32, np.float32, np.int32)


@pytest.mark.parametrize("threshold, expected", [(0.49, 1), (0.5, 0), (0.51, 0)])
def test_decode_ultralytics_threshold_is_strict(threshold, expected):
    (xyxy, _, _), = decode_ultralytics(raw_head([(8, 8, 4, 4, [0.5, 0.2])]), (32, 32), threshold)
    assert len(xyxy) == expected


def test_decode_ultralytics_splits_a_batch_per_image():
    head = raw_head([(8, 8, 4, 4, [0.9, 0.0]), (20, 8, 4, 4, [0.0, 0.8])], batch=3, image=2)
    head[0, :, 1] = [30, 30, 2, 2, 0.0, 0.6]
    per_image = decode_ultralytics(head, (64, 64), 0.25)
    assert [len(xyxy) for xyxy, _, _ in per_image] == [1, 0, 2]
    assert per_image[0][0].tolist() == [[29, 29, 31, 31]] and per_image[0][2].tolist() == [1]
    assert per_image[2][2].tolist() == [0, 1]


@pytest.mark.parametrize("shape", [(1, 4, 10), (84, 8400), (1, 84, 20, 20)])
def test_decode_ultralytics_refuses_other_shapes(shape):
    with pytest.raises(ValueError, match=r"\(N, 4 \+ classes, anchors\)"):
        decode_ultralytics(np.zeros(shape, np.float32), (640, 640))


# ---- decode_end2end ----

def end2end_rows(*rows: list[float], batch: int = 1, k: int = 4) -> np.ndarray:
    out = np.zeros((batch, k, 6), np.float32)  # zero rows: Ultralytics' padding after NMS
    for i, row in enumerate(rows):
        out[0, i] = row
    return out


def test_decode_end2end_keeps_rows_above_the_threshold_without_nms():
    duplicate = [10, 10, 20, 20, 0.8, 3]
    (xyxy, score, class_id), = decode_end2end(end2end_rows(duplicate, duplicate, [0, 0, 5, 5, 0.2, 1]), 0.25)
    assert xyxy.tolist() == [[10, 10, 20, 20]] * 2  # the graph's choice stands: no NMS after it
    assert score.tolist() == [pytest.approx(0.8)] * 2 and class_id.tolist() == [3, 3]


@pytest.mark.parametrize("class_value, expected", [(2.0, 2), (1.9999999, 2), (0.0, 0)])
def test_decode_end2end_class_is_the_nearest_integer(class_value, expected):
    (_, _, class_id), = decode_end2end(end2end_rows([1, 2, 3, 4, 0.9, class_value]))
    assert class_id.tolist() == [expected] and class_id.dtype == np.int32


def test_decode_end2end_splits_a_batch_and_drops_padding():
    rows = end2end_rows([1, 2, 3, 4, 0.9, 1], batch=3)
    rows[2, 3] = [5, 6, 7, 8, 0.5, 0]
    assert [len(x) for x, _, _ in decode_end2end(rows)] == [1, 0, 1]


def test_decode_end2end_refuses_a_raw_head():
    with pytest.raises(ValueError, match=r"\(N, K, 6\)"):
        decode_end2end(np.zeros((1, 84, 8400), np.float32))


# ---- layout dispatch ----

def ultralytics_meta(names=("cat", "dog"), imgsz=(64, 64), end2end=False, nms=None, batch=1, task="detect",
                     dynamic=True) -> dict[str, str]:
    """metadata_props as Ultralytics writes them: str() of Python values."""
    args = {"batch": batch, "nms": nms, "dynamic": dynamic, "simplify": False, "opset": 13}
    return {"description": "test", "stride": "32", "task": task, "batch": str(batch), "imgsz": str(list(imgsz)),
            "names": str(dict(enumerate(names))), "args": str(args), "end2end": str(end2end)}


DYNAMIC_INPUT = ["batch", 3, "height", "width"]
DARKNET_META = {"format": "darknet-yolo", "names": '["a"]', "anchors": "[[1, 2]]", "masks": "[[0]]",
                "input_width": "416", "input_height": "320"}


@pytest.mark.parametrize(
    "meta, input_shape, outputs, head, size, fixed, max_batch, pad",
    [
        (DARKNET_META, DYNAMIC_INPUT, [["n", 18, "h", "w"]], "darknet", (416, 320), False, None, False),
        (ultralytics_meta(), DYNAMIC_INPUT, [["batch", "Concat_dim_1", "anchors"]], "ultralytics", (64, 64),
         False, None, False),
        (ultralytics_meta(imgsz=(480, 640)), [1, 3, 480, 640], [[1, 6, 6300]], "ultralytics", (640, 480),
         True, 1, True),
        (ultralytics_meta(nms=True), DYNAMIC_INPUT, [["batch", "d1", "d2"]], "end2end", (64, 64), False, 1, False),
        (ultralytics_meta(nms=True, batch=4), [4, 3, 64, 64], [[4, 300, 6]], "end2end", (64, 64), True, 4, True),
        (ultralytics_meta(end2end=True), DYNAMIC_INPUT, [["batch", 300, 6]], "end2end", (64, 64), False, None,
         False),
        (ultralytics_meta(), DYNAMIC_INPUT, [["batch", 300, 6]], "end2end", (64, 64), False, None, False),
    ],
    ids=["darknet", "ultralytics-dynamic", "ultralytics-fixed", "nms-dynamic", "nms-fixed-batch4",
         "end2end-head", "end2end-by-shape"],
)
def test_read_layout(meta, input_shape, outputs, head, size, fixed, max_batch, pad):
    layout = read_layout(meta, input_shape, outputs)
    assert (layout.head, layout.input_size, layout.fixed_size, layout.max_batch, layout.pad_batch) == (
        head, size, fixed, max_batch, pad)


@pytest.mark.parametrize(
    "meta, outputs, message",
    [
        ({}, [[1, 84, 8400]], r"model format None is not supported .* outputs are \[1, 84, 8400\]"),
        ({"format": "tflite"}, [[1, 2]], r"format 'tflite' is not supported .* outputs are \[1, 2\]"),
        (ultralytics_meta(task="segment"), [[1, 38, 8400], [1, 32, 160, 160]], "task 'segment' is not supported"),
        (ultralytics_meta(), [[1, 84, 8400]], r"output \[1, 84, 8400\] .* neither \[N, 4 \+ 2 classes"),
        (ultralytics_meta(), [[1, 6, 20, 20]], r"output \[1, 6, 20, 20\]"),
        (ultralytics_meta(nms=True), [[1, 6, 8400]], r"output \[1, 6, 8400\] \(end2end=False, nms=True\)"),
        (ultralytics_meta(), [[1, 6, 8400], [1, 6, 8400]], "neither"),
        ({**ultralytics_meta(), "names": "['cat', 'dog']"}, [[1, 6, 8400]], "must map class indices"),
        ({**ultralytics_meta(), "names": "{1: 'cat'}"}, [[1, 5, 8400]], "must map class indices 0..n-1"),
        ({**ultralytics_meta(), "names": "__import__('os').getcwd()"}, [[1, 6, 8400]], "not a Python literal"),
        ({**ultralytics_meta(), "imgsz": "['big']"}, [[1, 6, 8400]], r"imgsz=\"\['big'\]\".* are not sizes"),
    ],
    ids=["no-metadata", "other-format", "segment", "wrong-class-count", "rank-4", "nms-vs-shape",
         "two-outputs", "names-list", "names-gap", "names-code", "imgsz-text"],
)
def test_unknown_layouts_are_refused_naming_the_output(meta, outputs, message):
    with pytest.raises(UnsupportedModel, match=message):
        read_layout(meta, DYNAMIC_INPUT, outputs)


def test_ultralytics_metadata_parses_literals_and_ignores_other_files():
    info = ultralytics_metadata(ultralytics_meta(names=("person", "bicycle"), imgsz=(480, 640), nms=True))
    assert info["names"] == ["person", "bicycle"] and info["imgsz"] == (480, 640)
    assert (info["stride"], info["task"], info["end2end"], info["args"]["nms"]) == (32, "detect", False, True)
    assert ultralytics_metadata(DARKNET_META) is None


# ---- ONNX Runtime on tiny graphs with Ultralytics metadata ----

def constant_model(output: np.ndarray, meta: dict[str, str], input_shape=DYNAMIC_INPUT,
                   first_image_only: bool = False) -> onnx.ModelProto:
    """A graph whose output is `output` (1, ...) for every image, whatever the pixels.

    first_image_only: the rest of the batch gets zeros, as an Ultralytics `nms=True` export run
    past its export batch size does.
    """
    const = numpy_helper.from_array(output.astype(np.float32), "const")
    shape = numpy_helper.from_array(np.array([-1] + [1] * (output.ndim - 1), np.int64), "shape")
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    nodes = [helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("Reshape", ["mean", "shape"], ["column"]),
             helper.make_node("Mul", ["column", "zero"], ["zeros"])]
    inits = [const, shape, zero]
    if first_image_only:
        inits += [numpy_helper.from_array(np.array(v, np.int64), n)
                  for n, v in (("start", [1]), ("end", [2 ** 31]), ("axis", [0]))]
        nodes += [helper.make_node("Add", ["zeros", "const"], ["all"]),
                  helper.make_node("Slice", ["all", "start", "end", "axis"], ["rest"]),
                  helper.make_node("Mul", ["rest", "zero"], ["rest_zero"]),
                  helper.make_node("Concat", ["const", "rest_zero"], ["output0"], axis=0)]
    else:
        nodes.append(helper.make_node("Add", ["zeros", "const"], ["output0"]))
    graph = helper.make_graph(
        nodes, "constant", [helper.make_tensor_value_info("images", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    helper.set_model_props(model, meta)
    return model


def save(model: onnx.ModelProto, tmp_path, name="m.onnx"):
    path = tmp_path / name
    onnx.save(model, path)
    return path


def frame(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(h + w).integers(0, 255, (h, w, 3), dtype=np.uint8)


# Three cat boxes in a 64x64 input: the second overlaps the first (IoU 56/72) and goes in NMS;
# one dog; one anchor under the threshold.
RAW = raw_head([(16, 16, 8, 8, [0.9, 0.1]), (17, 16, 8, 8, [0.8, 0.0]), (48, 40, 16, 8, [0.0, 0.6]),
                (30, 30, 4, 4, [0.1, 0.2])])


def test_ultralytics_raw_head_detections_in_source_pixels(tmp_path):
    path = save(constant_model(RAW, ultralytics_meta()), tmp_path)
    with create_detector({"type": "onnxruntime", "model": path, "intra_op_threads": 1}) as det:
        assert (det.layout.head, det.names, det.input_size) == ("ultralytics", ["cat", "dog"], (64, 64))
        dets = det.detect(frame(128, 128))  # scale 2, no padding
    assert dets.xyxy.tolist() == [[24, 24, 40, 40], [80, 72, 112, 88]]
    assert dets.confidence.tolist() == pytest.approx([0.9, 0.6]) and dets.labels(det.names) == ["cat", "dog"]


def test_end2end_rows_are_not_suppressed_again(tmp_path):
    rows = end2end_rows([8, 8, 24, 24, 0.9, 1], [9, 8, 25, 24, 0.7, 1], [0, 0, 4, 4, 0.1, 0], k=5)
    path = save(constant_model(rows, ultralytics_meta(nms=True)), tmp_path)
    with create_detector({"type": "onnxruntime", "model": path}) as det:
        dets = det.detect(frame(32, 64))  # scale 1, padded 16 rows above: y - 16
    assert det.layout.head == "end2end"
    assert dets.xyxy.tolist() == [[8, 0, 24, 8], [9, 0, 25, 8]] and dets.class_id.tolist() == [1, 1]


def test_an_nms_export_runs_one_frame_at_a_time(tmp_path):
    """Ultralytics unrolls the NMS of `nms=True` exports for its export batch: later images come back empty."""
    rows = end2end_rows([8, 8, 24, 24, 0.9, 1])
    model = constant_model(rows, ultralytics_meta(nms=True), first_image_only=True)
    with create_detector({"type": "onnxruntime", "model": save(model, tmp_path)}) as det:
        assert det.layout.max_batch == 1
        assert [len(d) for d in det.detect_batch([frame(64, 64)] * 3)] == [1, 1, 1]


def test_a_fixed_batch_is_padded(tmp_path):
    meta = ultralytics_meta(dynamic=False, batch=2)
    model = constant_model(RAW, meta, input_shape=[2, 3, 64, 64])
    with create_detector({"type": "onnxruntime", "model": save(model, tmp_path)}) as det:
        assert (det.layout.max_batch, det.layout.pad_batch, det.layout.fixed_size) == (2, True, True)
        results = det.detect_batch([frame(64, 64)] * 3)
    assert [len(d) for d in results] == [2, 2, 2]


def test_a_fixed_size_model_refuses_another_input_size(tmp_path):
    model = constant_model(RAW, ultralytics_meta(), input_shape=[1, 3, 64, 64])
    with pytest.raises(InvalidConfig, match=r"input_size \(128, 128\) does not fit .* for \(64, 64\) only"):
        create_detector({"type": "onnxruntime", "model": save(model, tmp_path), "input_size": (128, 128)})


def test_an_unknown_layout_fails_at_start_naming_the_shape(tmp_path):
    model = constant_model(np.zeros((1, 5, 7, 2), np.float32), ultralytics_meta())
    with pytest.raises(UnsupportedModel, match=r"\[N, 4 \+ 2 classes, anchors\]"):
        create_detector({"type": "onnxruntime", "model": save(model, tmp_path)})


# ---- the ultralytics backend's config ----

def test_ultralytics_config_defaults_and_registry():
    config = parse_config({"type": "ultralytics", "model": "yolov8n.pt"})
    assert isinstance(config, UltralyticsConfig)
    assert (config.confidence_threshold, config.iou_threshold, config.max_detections, config.device,
            config.input_size) == (0.25, 0.45, 300, None, None)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"type": "ultralytics"}, "model: Field required"),
        ({"type": "ultralytics", "model": "m.pt", "conf": 0.3}, "conf: Extra inputs are not permitted"),
        ({"type": "ultralytics", "model": "m.pt", "input_size": [640, 500]}, "input_size: .*multiples of 32"),
        ({"type": "ultralytics", "model": "m.pt", "iou_threshold": -0.1}, r"iou_threshold: .*-0.1"),
        ({"type": "ultralytics", "model": "m.pt", "max_detections": 0}, "max_detections: .*got 0"),
    ],
)
def test_bad_ultralytics_configs_name_the_field(data, message):
    with pytest.raises(InvalidConfig, match=message):
        parse_config(data)


def test_a_missing_ultralytics_package_names_the_extra(tmp_path, monkeypatch):
    model = tmp_path / "m.pt"
    model.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # what `import ultralytics` meets when not installed
    with pytest.raises(BackendUnavailable, match=r"pip install 'edgefleet\[train\]'"):
        create_detector({"type": "ultralytics", "model": model})


# ---- torchvision: the product's check, the tests' shim ----

CHECK_WITHOUT_SHIM = """
import json
from edgefleet.models.backends import create_detector
from edgefleet.models.errors import BackendUnavailable
try:
    create_detector({"type": "ultralytics", "model": %r})
except BackendUnavailable as err:
    print(json.dumps(str(err)))
else:
    print(json.dumps(None))
"""


def test_a_torchvision_without_its_ops_fails_the_backend_at_start(tmp_path):
    """In a fresh process: this test session may have installed the shim already."""
    if importlib.util.find_spec("ultralytics") is None or importlib.util.find_spec("torchvision") is None:
        pytest.skip("needs the train extra: pip install 'edgefleet[train]'")
    model = tmp_path / "m.pt"
    model.write_bytes(b"not read: the check comes first")
    env = {**os.environ, "YOLO_CONFIG_DIR": str(tmp_path), "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "false",
           "YOLO_VERBOSE": "false"}
    proc = subprocess.run([sys.executable, "-c", CHECK_WITHOUT_SHIM % str(model)], capture_output=True, text=True,
                          timeout=120, env=env, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-2000:]
    message = json.loads(proc.stdout.strip().splitlines()[-1])
    if message is None:
        pytest.skip("torchvision's own C++ ops load here: nothing to refuse")
    assert "needs torchvision.ops.nms, but torchvision" in message
    assert "C++ ops do not load with torch" in message
    assert "Install the torchvision built for this torch, from the same index as torch: pip install" in message


def random_boxes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2))], axis=1).astype(np.float32)
    return boxes, rng.uniform(size=n).astype(np.float32)


@pytest.mark.parametrize("n, seed, iou_threshold", [(0, 0, 0.5), (1, 0, 0.5), (300, 1, 0.45), (300, 2, 0.7),
                                                     (50, 3, 0.0)])
def test_torch_nms_matches_the_numpy_greedy_nms(n, seed, iou_threshold):
    torch = pytest.importorskip("torch")
    from ..torchvision_nms import torch_nms

    boxes, scores = random_boxes(n, seed)
    keep = torch_nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou_threshold)
    assert keep.dtype == torch.int64
    assert keep.tolist() == nms(boxes, scores, np.zeros(n, np.int32), iou_threshold).tolist()


def test_torch_nms_keeps_empty_boxes_as_torchvision_does():
    torch = pytest.importorskip("torch")
    from ..torchvision_nms import torch_nms

    boxes = torch.tensor([[5.0, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 10]])  # 0/0 IoU: no overlap
    assert torch_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 1, 2]


def test_torchvision_nms_works_after_the_shim_and_passes_the_check():
    torch = pytest.importorskip("torch")
    pytest.importorskip("ultralytics")  # torchvision comes with the train extra
    from edgefleet.models.backends.ultralytics import check_torchvision_nms

    from ..torchvision_nms import install_torchvision_nms_fallback

    assert install_torchvision_nms_fallback() in ("torchvision", "test-shim")
    assert install_torchvision_nms_fallback() in ("torchvision", "test-shim")  # idempotent
    check_torchvision_nms()  # what the backend asks before it loads a model
    import torchvision

    boxes, scores = random_boxes(200, 4)
    keep = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.45)
    expected = nms(boxes, scores, np.zeros(200, np.int32), 0.45)
    assert keep.tolist() == expected.tolist()
    assert box_iou(boxes[expected], boxes[expected]).max(initial=0, where=~np.eye(len(expected), dtype=bool)) <= 0.45
