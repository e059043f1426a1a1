"""The OpenVINO backend on tiny converted models: config, failures at start, and the same
outputs and boxes as the onnxruntime backend, from ONNX and from an IR written by OpenVINO."""
from __future__ import annotations

import shutil
import sys

import numpy as np
import onnx
import pytest

from edgefleet.models.backends import BACKENDS, create_detector, parse_config
from edgefleet.models.backends.openvino import OpenVinoConfig, compile_properties
from edgefleet.models.darknet import convert
from edgefleet.models.errors import BackendUnavailable, InvalidConfig, ModelError, ModelNotFound, UnsupportedModel
from edgefleet.models.manifest import manifest_for_onnx, write_manifest
from edgefleet.models.openvino_quantize import quantize
from edgefleet.models.yolo import box_iou, greedy_pairs, letterbox_batch

from ..conftest import require_module
from .test_models_backends import OBJECT_SCORE, constant_weights, frame
from .test_models_darknet import TINY_CFG, tiny_weights

pytestmark = pytest.mark.cpu_extra
ov = require_module("openvino")


@pytest.fixture(scope="module")
def constant_model(tmp_path_factory):
    """Every cell sees a 'dog' (tests/unit/test_models_backends.py): the boxes are known."""
    path = tmp_path_factory.mktemp("models") / "constant.onnx"
    onnx.save(convert(TINY_CFG, constant_weights(), ["cat", "dog"]), path)
    return path


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    """Random weights: outputs that depend on every pixel, for comparing runtimes number by number."""
    path = tmp_path_factory.mktemp("models") / "random.onnx"
    onnx.save(convert(TINY_CFG, tiny_weights(0)[0], ["cat", "dog"]), path)
    return path


def to_ir(onnx_path, folder):
    xml = folder / (onnx_path.stem + ".xml")
    ov.save_model(ov.Core().read_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    return xml


def assert_same_boxes(ours, theirs) -> None:
    """One to one, same class, IoU > 0.999, same score (boxes of equal score may come in either order)."""
    assert len(ours) == len(theirs) > 0
    iou = box_iou(ours.xyxy, theirs.xyxy)
    iou[ours.class_id[:, None] != theirs.class_id[None, :]] = 0.0
    pairs = greedy_pairs(iou, 0.999)
    assert len(pairs) == len(ours)
    mine, other = (list(side) for side in zip(*pairs))
    np.testing.assert_allclose(ours.confidence[mine], theirs.confidence[other], atol=1e-5)


# ---- registry, config, failures at start ----

def test_registered_with_its_defaults():
    assert "openvino" in BACKENDS
    config = parse_config({"type": "openvino", "model": "m.xml"})
    assert isinstance(config, OpenVinoConfig)
    assert (config.device, config.performance_hint, config.threads, config.inference_precision) == (
        "CPU", "latency", None, "f32")


@pytest.mark.parametrize("data, message", [
    ({"type": "openvino", "model": "m.xml", "hint": "latency"}, "hint: Extra inputs are not permitted"),
    ({"type": "openvino", "model": "m.xml", "performance_hint": "fast"}, "performance_hint: .*'fast'"),
    ({"type": "openvino", "model": "m.xml", "threads": 0}, "threads: .*got 0"),
    ({"type": "openvino", "model": "m.xml", "input_size": [320, 300]}, "input_size: .*multiples of 32"),
    ({"type": "openvino", "model": "m.xml", "inference_precision": "int8"}, "inference_precision: .*'int8'"),
])
def test_config_typos_name_the_field_and_value(data, message):
    with pytest.raises(InvalidConfig, match=message):
        parse_config(data)


def test_compile_properties_follow_the_config():
    config = OpenVinoConfig(model="m.xml", performance_hint="throughput", threads=2, inference_precision="bf16")
    assert compile_properties(config) == {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_NUM_THREADS": 2,
                                          "INFERENCE_PRECISION_HINT": "bf16"}
    assert compile_properties(OpenVinoConfig(model="m.xml", device="NPU")) == {"PERFORMANCE_HINT": "LATENCY"}


def test_bf16_is_asked_for_by_name(random_model):
    det = create_detector({"type": "openvino", "model": random_model, "inference_precision": "bf16"})
    assert str(det.compiled.get_property("INFERENCE_PRECISION_HINT")) in {"<Type: 'bfloat16'>", "<Type: 'float32'>"}
    f32 = create_detector({"type": "openvino", "model": random_model})
    assert str(f32.compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"


def test_without_openvino_it_fails_at_start_saying_how_to_get_it(constant_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # what `import openvino` meets when it is not installed
    with pytest.raises(BackendUnavailable, match=r"needs the openvino package: pip install 'edgefleet\[cpu\]'"):
        create_detector({"type": "openvino", "model": constant_model})


def test_a_device_not_present_fails_at_start(constant_model):
    with pytest.raises(BackendUnavailable, match=r"device 'NPU.7' is not present here; this machine has \[.*'CPU'"):
        create_detector({"type": "openvino", "model": constant_model, "device": "NPU.7"})


def test_missing_files_fail_at_start(constant_model, tmp_path):
    with pytest.raises(ModelNotFound, match="does not exist"):
        create_detector({"type": "openvino", "model": tmp_path / "nope.xml"})
    xml = to_ir(constant_model, tmp_path)
    xml.with_suffix(".bin").unlink()
    with pytest.raises(ModelNotFound, match=r"constant.xml has no weights file constant.bin beside it"):
        create_detector({"type": "openvino", "model": xml})


@pytest.mark.parametrize("name, content, error, message", [
    ("m.pt", b"x", UnsupportedModel, r"the openvino backend reads .xml or .onnx files"),
    ("m.onnx", b"not onnx", UnsupportedModel, "openvino cannot read"),
])
def test_unreadable_models_fail_at_start(tmp_path, name, content, error, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(error, match=message):
        create_detector({"type": "openvino", "model": tmp_path / name})


def test_a_fixed_size_model_refuses_another_input_size(random_model, tmp_path):
    model = ov.Core().read_model(str(random_model))
    model.reshape([1, 3, 32, 32])
    ov.save_model(model, str(tmp_path / "fixed.xml"))
    with pytest.raises(InvalidConfig, match=r"input_size \(64, 64\) does not fit .*for \(32, 32\) only"):
        create_detector({"type": "openvino", "model": tmp_path / "fixed.xml", "input_size": (64, 64)})
    det = create_detector({"type": "openvino", "model": tmp_path / "fixed.xml"})
    assert (det.max_batch, det.pad_batch) == (1, True)
    assert len(det.detect_batch([frame(32, 32), frame(64, 64)])) == 2  # one call per frame


def test_a_manifest_beside_the_model_is_checked(constant_model, tmp_path):
    path = tmp_path / "m.onnx"
    shutil.copy(constant_model, path)
    write_manifest(manifest_for_onnx(path), path)
    assert create_detector({"type": "openvino", "model": path}).names == ["cat", "dog"]
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ModelError, match="sha256 .* does not match"):
        create_detector({"type": "openvino", "model": path})


# ---- the same answers as onnxruntime ----

def test_known_boxes_in_source_pixels(constant_model):
    with create_detector({"type": "openvino", "model": constant_model, "threads": 1}) as det:
        assert det.names == ["cat", "dog"] and det.input_size == (32, 32) and det.last_inference_ms > 0
        dets = det.detect(frame(64, 64))
    assert set(dets.labels(["cat", "dog"])) == {"dog"}
    np.testing.assert_allclose(dets.confidence, OBJECT_SCORE, rtol=1e-5)
    assert dets.xyxy.min() >= 0 and dets.xyxy.max() <= 64


@pytest.mark.parametrize("source", ["onnx", "ir"])
@pytest.mark.parametrize("hint", ["latency", "throughput"])
def test_raw_outputs_and_boxes_equal_onnxruntimes(random_model, tmp_path, source, hint):
    model = random_model if source == "onnx" else to_ir(random_model, tmp_path)
    options = {"input_size": (64, 64), "confidence_threshold": 0.5}
    reference = create_detector({"type": "onnxruntime", "model": random_model, **options})
    det = create_detector({"type": "openvino", "model": model, "performance_hint": hint, **options})
    frames = [frame(64, 64), frame(48, 96), frame(120, 40)]
    tensor, _ = letterbox_batch(frames, (64, 64))
    for ours, theirs in zip(det.infer(tensor), reference.infer(tensor), strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
    for ours, theirs in zip(det.detect_batch(frames), reference.detect_batch(frames), strict=True):
        assert_same_boxes(ours, theirs)


def test_a_batch_equals_its_frames_one_by_one(random_model):
    det = create_detector({"type": "openvino", "model": random_model, "confidence_threshold": 0.05})
    frames = [frame(64, 64), frame(32, 32), frame(96, 48), frame(10, 300)]
    batched = det.detect_batch(frames)
    assert len(batched) == 4 and det.detect_batch([]) == []
    for f, dets in zip(frames, batched):
        np.testing.assert_allclose(dets.xyxy, det.detect(f).xyxy, atol=1e-4)


def test_rect_letterboxes_into_the_smallest_rectangle(random_model):
    det = create_detector({"type": "openvino", "model": random_model, "input_size": (64, 64), "rect": True,
                           "confidence_threshold": 0.05})
    wide = det.prepare([frame(32, 128)])
    assert wide.tensor.shape[2:] == (32, 64)  # 4:1 at scale 0.5: 64x16, rounded up to 32 rows
    assert len(det.finish(wide, det.run_prepared(wide))) == 1


def test_a_closed_detector_refuses_work(constant_model):
    det = create_detector({"type": "openvino", "model": constant_model})
    det.close()
    with pytest.raises(ModelError, match="closed"):
        det.detect(frame(32, 32))


# ---- INT8 quantization (models/openvino_quantize.py) on the tiny model ----

@pytest.mark.slow  # NNCF imports and calibrates: about 3.5 s
def test_quantize_writes_an_int8_ir_the_backend_loads(random_model, tmp_path):
    progress: list[tuple[int, int]] = []
    frames = [frame(48 + 8 * i, 64) for i in range(6)]
    xml = quantize(random_model, frames, tmp_path / "int8", input_size=(64, 64),
                   progress=lambda done, total: progress.append((done, total)))
    assert xml == tmp_path / "int8" / "random-int8.xml"
    assert sorted(p.name for p in xml.parent.iterdir()) == ["random-int8.bin", "random-int8.xml"]
    assert progress == [(i, 6) for i in range(1, 7)]
    assert "FakeQuantize" in xml.read_text()
    det = create_detector({"type": "openvino", "model": xml, "input_size": (64, 64)})
    assert det.names == ["cat", "dog"]  # the ONNX metadata travelled into the IR
    assert len(det.detect_batch(frames[:2])) == 2


@pytest.mark.parametrize("calibration, size, message", [
    ([], (64, 64), "at least one calibration frame; got none"),
    ([np.zeros((8, 8), np.uint8)], (64, 64), r"calibration frame 0 is uint8 \(8, 8\); expected BGR uint8"),
    ([np.zeros((8, 8, 3), np.float32)], (64, 64), "calibration frame 0 is float32"),
    ([np.zeros((8, 8, 3), np.uint8)], (64, 50), r"multiples of 32 \(width, height\), got \(64, 50\)"),
])
def test_quantize_refuses_bad_inputs_by_name(random_model, tmp_path, calibration, size, message):
    with pytest.raises(InvalidConfig, match=message):
        quantize(random_model, calibration, tmp_path, input_size=size)
    assert list(tmp_path.iterdir()) == []


def test_quantize_a_missing_model_fails(tmp_path):
    with pytest.raises(ModelNotFound, match="nope.onnx does not exist"):
        quantize(tmp_path / "nope.onnx", [frame(32, 32)], tmp_path, input_size=(32, 32))


def test_load_detector_runs_an_ir_on_openvino(constant_model, tmp_path):
    from edgefleet.models import load_detector

    with load_detector(to_ir(constant_model, tmp_path)) as det:
        assert type(det).__name__ == "OpenVinoDetector" and det.names == ["cat", "dog"]


def test_the_agent_gives_an_ir_its_threads(constant_model, tmp_path):
    """`edge-agent run --model x.xml --threads 1`: the agent names the option as this backend does."""
    from edgefleet.agent.build import load_detector as agent_detector
    from edgefleet.agent.config import AgentConfig

    config = AgentConfig.model_validate({"controller": "127.0.0.1:1", "source": ["0"], "threads": 1, "rect": True})
    with agent_detector(to_ir(constant_model, tmp_path), config) as det:
        assert type(det).__name__ == "OpenVinoDetector"
