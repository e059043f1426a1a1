"""Backend registry, config validation and the ONNX Runtime backend on a tiny converted model."""
from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import onnx
import pytest

from edgefleet.models import load_detector
from edgefleet.models.backends import BACKENDS, create_detector, parse_config
from edgefleet.models.backends.onnxruntime import OnnxRuntimeConfig, choose_providers
from edgefleet.models.bundled import default_model
from edgefleet.models.darknet import convert
from edgefleet.models.errors import (
    ArtifactMismatch,
    BackendUnavailable,
    IncompatibleArtifact,
    InvalidConfig,
    ModelError,
    ModelNotFound,
    UnsupportedModel,
)
from edgefleet.models.manifest import manifest_for_onnx, manifest_path, read_manifest, verify_artifact, write_manifest
from edgefleet.models.yolo import letterbox_batch

from .test_models_darknet import HEAD, NC, TINY_CFG, tiny_weights

OBJECT_SCORE = float(1 / (1 + np.exp(-6.0))) ** 2  # objectness logit 6 x class logit 6


def head_bias(objectness: tuple[float, float], class_logits: tuple[float, float]) -> np.ndarray:
    """Bias of a head conv whose weights are zero: every cell predicts the same, whatever the image."""
    bias = np.zeros(HEAD)
    for anchor in range(2):
        bias[anchor * (5 + NC) + 4] = objectness[anchor]
        bias[anchor * (5 + NC) + 5:(anchor + 1) * (5 + NC)] = class_logits
    return bias


def constant_weights() -> bytes:
    """TINY_CFG whose head0 sees nothing and whose head1 sees a 'dog' of anchor 0 (4x6 px) in every cell."""
    weights, params = tiny_weights()
    header, floats = weights[:20], []
    params[2] |= {"weight": np.zeros_like(params[2]["weight"]), "bias": head_bias((-20, -20), (-20, -20))}
    params[4] |= {"weight": np.zeros_like(params[4]["weight"]), "bias": head_bias((6, -20), (-20, 6))}
    for p in params:
        norm = [p["scale"], p["mean"], p["var"]] if "scale" in p else []
        floats += [p["bias"], *norm, p["weight"].ravel()]
    return header + np.concatenate(floats).astype(np.float32).tobytes()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny.onnx"
    onnx.save(convert(TINY_CFG, constant_weights(), ["cat", "dog"]), path)
    return path


@pytest.fixture
def detector(tiny_model):
    with create_detector({"type": "onnxruntime", "model": tiny_model, "intra_op_threads": 1}) as det:
        yield det


def frame(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(h * w).integers(0, 255, (h, w, 3), dtype=np.uint8)


# ---- registry and config ----

def test_registry_has_the_onnxruntime_plugin():
    assert "onnxruntime" in BACKENDS
    config = parse_config({"type": "onnxruntime", "model": "m.onnx"})
    assert isinstance(config, OnnxRuntimeConfig)
    assert (config.confidence_threshold, config.iou_threshold, config.providers) == (0.25, 0.45, None)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"type": "tensorflow", "model": "m"}, r"type 'tensorflow' is unknown; known: \[.*'onnxruntime'.*\]"),
        ({"model": "m"}, "detector type None is unknown"),
        ({"type": "onnxruntime"}, "model: Field required"),
        ({"type": "onnxruntime", "model": "m", "thresh": 0.3}, "thresh: Extra inputs are not permitted"),
        ({"type": "onnxruntime", "model": "m", "input_size": [416, 300]}, "input_size: .*multiples of 32"),
        ({"type": "onnxruntime", "model": "m", "confidence_threshold": 1.5}, "confidence_threshold: .*1.5"),
        ({"type": "onnxruntime", "model": "m", "intra_op_threads": 0}, "intra_op_threads: .*got 0"),
        ("onnxruntime", "must be a mapping"),
    ],
)
def test_bad_configs_name_the_field_and_value(data, message):
    with pytest.raises(InvalidConfig, match=message):
        parse_config(data)


CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


@pytest.mark.parametrize(
    "requested, available, expected",
    [
        (None, [CPU], [CPU]),
        (None, ["AzureExecutionProvider", CPU, CUDA, TRT], [TRT, CUDA, CPU]),
        (None, [CUDA, CPU], [CUDA, CPU]),
        ([CPU], [CUDA, CPU], [CPU]),
        ([CPU, CUDA], [CUDA, CPU], [CPU, CUDA]),  # an explicit order is kept
    ],
)
def test_providers_prefer_tensorrt_then_cuda_then_cpu(requested, available, expected):
    assert choose_providers(requested, available) == expected


def test_a_missing_provider_fails_at_start(tiny_model):
    with pytest.raises(BackendUnavailable, match=r"\['NoSuchExecutionProvider'\] not available"):
        create_detector({"type": "onnxruntime", "model": tiny_model,
                         "providers": ["NoSuchExecutionProvider"]})


def test_a_missing_model_fails_at_start(tmp_path):
    with pytest.raises(ModelNotFound, match="does not exist"):
        create_detector({"type": "onnxruntime", "model": tmp_path / "nope.onnx"})


@pytest.mark.parametrize("content, message", [(None, "model format None is not supported"),
                                              (b"not onnx", "onnxruntime cannot load")])
def test_a_model_we_cannot_decode_fails_at_start(tiny_model, tmp_path, content, message):
    path = tmp_path / "other.onnx"
    if content is None:  # a valid ONNX file without our metadata
        model = onnx.load(tiny_model)
        del model.metadata_props[:]
        onnx.save(model, path)
    else:
        path.write_bytes(content)
    with pytest.raises(UnsupportedModel, match=message):
        create_detector({"type": "onnxruntime", "model": path})


# ---- the detector on a model whose answer is known ----

def test_detector_reads_names_and_input_size_from_the_model(detector):
    assert detector.names == ["cat", "dog"] and detector.input_size == (32, 32)
    assert detector.providers == ["CPUExecutionProvider"]
    assert detector.last_inference_ms > 0  # warmed up in the constructor


def test_detections_come_back_in_source_pixels(detector):
    dets = detector.detect(frame(64, 64))  # scale 2, no padding: 4x6 anchor boxes become 8x12
    assert len(dets) > 0 and dets.tracker_id is None
    assert set(dets.labels(detector.names)) == {"dog"}
    np.testing.assert_allclose(dets.confidence, OBJECT_SCORE, rtol=1e-5)
    inside = (dets.xyxy[:, 0] > 0) & (dets.xyxy[:, 2] < 64) & (dets.xyxy[:, 1] > 0) & (dets.xyxy[:, 3] < 64)
    sizes = dets.xyxy[inside, 2:] - dets.xyxy[inside, :2]
    np.testing.assert_allclose(sizes, np.broadcast_to([8, 12], sizes.shape), atol=1e-3)
    assert dets.xyxy.min() >= 0 and dets.xyxy.max() <= 64


def test_thresholds_are_applied(tiny_model, detector):
    strict = create_detector({"type": "onnxruntime", "model": tiny_model, "confidence_threshold": 0.996})
    assert len(strict.detect(frame(64, 64))) == 0
    loose = create_detector({"type": "onnxruntime", "model": tiny_model, "iou_threshold": 0.99})
    assert len(loose.detect(frame(64, 64))) == 32 * 32  # nothing suppressed: one box per cell
    assert len(detector.detect(frame(64, 64))) < 32 * 32 / 3  # neighbours overlap more than 0.45


def test_batch_is_one_call_with_one_result_per_frame(detector):
    frames = [frame(64, 64), frame(32, 32), frame(96, 48), frame(10, 300)]
    batched = detector.detect_batch(frames)
    assert len(batched) == 4 and detector.detect_batch([]) == []
    for f, dets in zip(frames, batched):
        single = detector.detect(f)
        np.testing.assert_allclose(dets.xyxy, single.xyxy, atol=1e-4)
        h, w = f.shape[:2]
        assert dets.xyxy[:, [0, 2]].max() <= w and dets.xyxy[:, [1, 3]].max() <= h


def test_input_size_can_differ_from_the_models_default(tiny_model):
    det = create_detector({"type": "onnxruntime", "model": tiny_model, "input_size": (64, 32)})
    assert det.input_size == (64, 32)
    assert len(det.detect(frame(100, 200))) > 0


def test_a_closed_detector_refuses_work(detector):
    detector.close()
    with pytest.raises(ModelError, match="closed"):
        detector.detect(frame(32, 32))


# ---- manifests at load ----

@pytest.fixture
def model_with_manifest(tiny_model, tmp_path):
    path = tmp_path / "tiny.onnx"
    shutil.copy(tiny_model, path)
    write_manifest(manifest_for_onnx(path), path)
    return path


def test_a_model_matching_its_manifest_loads(model_with_manifest):
    with create_detector({"type": "onnxruntime", "model": model_with_manifest}) as det:
        assert det.names == ["cat", "dog"]


def test_a_model_that_differs_from_its_manifest_is_refused(model_with_manifest):
    model = onnx.load(str(model_with_manifest))
    model.producer_version = "replaced"  # a valid model, just not the file the manifest describes
    onnx.save(model, model_with_manifest)
    with pytest.raises(ArtifactMismatch, match=r"tiny\.onnx.*(bytes; its manifest says|does not match its manifest)"):
        create_detector({"type": "onnxruntime", "model": model_with_manifest})


def test_a_manifest_for_another_runtime_is_refused(model_with_manifest):
    manifest = dataclasses.replace(read_manifest(model_with_manifest), format="tensorrt-engine",
                                   tensorrt_version="10.3.0", gpu_compute_capability="8.7")
    write_manifest(manifest, model_with_manifest)
    with pytest.raises(IncompatibleArtifact, match=r"TensorRT engine and needs TensorRT 10\.3\.0 .* 8\.7; "
                                                   r"this device has no TensorRT"):
        create_detector({"type": "onnxruntime", "model": model_with_manifest})


@pytest.mark.data
def test_the_bundled_cache_carries_a_manifest_and_heals_a_bad_file(tmp_path):
    path = default_model(cache_dir=tmp_path)
    assert verify_artifact(path).layout == "darknet-yolo"
    manifest_path(path).unlink()  # a cache from before manifests gets one
    assert default_model(cache_dir=tmp_path) == path and verify_artifact(path)
    manifest = read_manifest(path)
    write_manifest(dataclasses.replace(manifest, file_sha256="0" * 64), path)  # the file no longer matches
    assert default_model(cache_dir=tmp_path) == path
    assert read_manifest(path).file_sha256 == manifest.file_sha256  # converted again, same bytes


def test_io_binding_gives_the_same_outputs_as_run(tiny_model):
    """The path GPU providers take by default, exercised here on the CPU provider."""
    frames = [frame(120, 160), frame(90, 200)]
    with create_detector({"type": "onnxruntime", "model": tiny_model}) as plain, \
            create_detector({"type": "onnxruntime", "model": tiny_model, "io_binding": True}) as bound:
        assert (plain.io_binding, bound.io_binding) == (False, True)  # CPU: off unless asked
        batch, _ = letterbox_batch(frames, plain.input_size)
        for a, b in zip(plain.infer(batch), bound.infer(batch), strict=True):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(plain.detect_batch(frames), bound.detect_batch(frames), strict=True):
            np.testing.assert_array_equal(a.xyxy, b.xyxy)


def test_load_detector_picks_the_backend_by_file_type(tiny_model, tmp_path):
    with load_detector(tiny_model, intra_op_threads=1) as det:
        assert det.names == ["cat", "dog"] and det.layout.head == "darknet"
    with pytest.raises(UnsupportedModel, match=r"no backend runs \.tflite files \(known: \.onnx, \.engine"):
        load_detector(tmp_path / "m.tflite")
    with pytest.raises(InvalidConfig, match="intra_op_threads"):
        load_detector(tmp_path / "m.engine", intra_op_threads=1)  # options belong to the chosen backend
