"""Artifact manifests: round trip, strict reading, file checks and engine/device compatibility."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgefleet.models.bundled import FILES, WEIGHTS
from edgefleet.models.errors import (
    ArtifactMismatch,
    ChecksumMismatch,
    IncompatibleArtifact,
    ManifestError,
    ModelError,
    ModelNotFound,
    UnsupportedModel,
)
from edgefleet.models.manifest import (
    ArtifactManifest,
    DeviceCaps,
    check_compatible,
    compute_capability,
    manifest_for_onnx,
    manifest_path,
    parse_manifest,
    probe_device,
    read_manifest,
    to_json,
    verify_artifact,
    write_manifest,
)

SHA = "ab" * 32


def manifest(**changes) -> ArtifactManifest:
    """A valid engine manifest; `changes` replace fields."""
    base = {
        "format": "tensorrt-engine", "layout": "darknet-yolo", "precision": "fp16", "input_width": 416,
        "input_height": 416, "class_names": ("person", "car"), "file_sha256": SHA, "file_size": 1234,
        "created_at": "2025-01-02T03:04:05+00:00", "producer": "edgefleet.models.tensorrt_build 1",
        "batch_range": (1, 4), "resolution_range": None, "source_sha256": "cd" * 32, "tensorrt_version": "10.3.0",
        "gpu_compute_capability": "8.7", "opset": 13,
        "decode_params": {"anchors": [[10.0, 14.0], [23.0, 27.0]], "masks": [[0], [1]], "strides": [32, 16]},
        "tool_versions": {"tensorrt": "10.3.0"}}
    return dataclasses.replace(ArtifactManifest(**base), **changes) if changes else ArtifactManifest(**base)


def as_dict(m: ArtifactManifest) -> dict:
    return json.loads(to_json(m))


def artifact(tmp_path, content: bytes = b"engine bytes " * 1000, **changes):
    """A file and its manifest (digest and size of `content`) written beside it."""
    path = tmp_path / "model.engine"
    path.write_bytes(content)
    m = manifest(file_sha256=hashlib.sha256(content).hexdigest(), file_size=len(content), **changes)
    write_manifest(m, path)
    return path, m


# ---- round trip and strict reading ----

@pytest.mark.parametrize("changes", [
    {},
    {"format": "onnx", "tensorrt_version": None, "gpu_compute_capability": None, "batch_range": (1, None),
     "resolution_range": ((32, 32), None)},
    {"resolution_range": ((320, 320), (1280, 736)), "precision": "int8", "source_sha256": None},
    {"layout": "ultralytics", "decode_params": {}, "class_names": ()},
])
def test_manifest_round_trips_through_json_beside_the_file(tmp_path, changes):
    m = manifest(**changes)
    written = write_manifest(m, tmp_path / "m.engine")
    assert written == tmp_path / "m.engine.manifest.json" == manifest_path(tmp_path / "m.engine")
    assert read_manifest(tmp_path / "m.engine") == m
    assert list(tmp_path.iterdir()) == [written]  # no temporary file left behind


def edit(**changes):
    """Manifest JSON text with keys replaced (a value of ... deletes the key)."""
    data = as_dict(manifest())
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data)


@pytest.mark.parametrize("text, message", [
    (edit(thresh=0.5), r"unknown field thresh=0\.5"),
    (edit(precision=...), r"missing field\(s\) precision"),
    (edit(input_width="416"), r"field input_width='416': Input should be a valid integer"),
    (edit(input_width=416.0), r"field input_width=416\.0: Input should be a valid integer"),
    (edit(precision="fp64"), r"field precision='fp64': Input should be 'fp32', 'fp16' or 'int8'"),
    (edit(format="pb"), r"field format='pb'"),
    (edit(class_names="person"), r"field class_names='person': Input should be a valid array"),
    (edit(class_names=["person", 3]), r"field class_names\.1=3: Input should be a valid string"),
    (edit(batch_range=[4, 2]), r"batch_range=\(4, 2\): must be \(min >= 1"),
    (edit(file_size=-1), r"file_size=-1: must be >= 0"),
    (edit(input_height=0), r"input_height=0: must be a positive"),
    (edit(file_sha256="XYZ"), r"file_sha256='XYZ': must be 64 lowercase hex digits"),
    (edit(tensorrt_version=None), r"tensorrt_version=None: an engine must name the TensorRT version"),
    (edit(gpu_compute_capability="sm_87"), r"gpu_compute_capability='sm_87': an engine must name"),
    (edit(created_at="yesterday"), r"created_at='yesterday': must be an ISO 8601 time"),
    (edit(decode_params={}), r"decode_params=\{\}: layout 'darknet-yolo' needs 'anchors' and 'masks'"),
    (edit(manifest_version=2), r"manifest_version=2: this edgefleet reads version 1 only"),
    ("[1, 2]", r"must be a JSON object, got list"),
    ("{not json", r"not valid JSON"),
])
def test_bad_manifests_name_the_field_and_value(text, message):
    with pytest.raises(ManifestError, match=message) as info:
        parse_manifest(text, source="m.engine.manifest.json")
    assert str(info.value).startswith("m.engine.manifest.json: ")
    assert isinstance(info.value, ModelError)


def test_a_missing_manifest_says_how_to_make_one(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(ManifestError, match=r"has no manifest .*edgefleet model manifest .*m\.onnx"):
        read_manifest(tmp_path / "m.onnx")


# ---- the file against its manifest ----

def test_verify_accepts_the_file_the_manifest_describes(tmp_path):
    path, m = artifact(tmp_path)
    assert verify_artifact(path) == m
    assert verify_artifact(path, m) == m


@pytest.mark.parametrize("tamper, message", [
    (lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:], r"sha256 [0-9a-f]{64} does not match its manifest's"),
    (lambda b: b + b"\0", r"is 13001 bytes; its manifest says 13000 \(truncated or replaced\)"),
    (lambda b: b[:-1], r"is 12999 bytes; its manifest says 13000"),
])
def test_verify_refuses_a_changed_file(tmp_path, tamper, message):
    path, _ = artifact(tmp_path)
    path.write_bytes(tamper(path.read_bytes()))
    with pytest.raises(ArtifactMismatch, match=message) as info:
        verify_artifact(path)
    assert isinstance(info.value, ChecksumMismatch)


def test_verify_hashes_files_larger_than_one_read(tmp_path):
    content = np.random.default_rng(0).integers(0, 256, 3 * (1 << 20) + 17, dtype=np.uint8).tobytes()
    path, m = artifact(tmp_path, content)
    assert verify_artifact(path).file_sha256 == hashlib.sha256(content).hexdigest() == m.file_sha256


def test_verify_a_missing_file(tmp_path):
    with pytest.raises(ModelNotFound, match="does not exist"):
        verify_artifact(tmp_path / "nope.engine", manifest())


# ---- engines and devices ----

JETSON_ORIN = DeviceCaps("10.3.0", "8.7", ("CPUExecutionProvider",))


@pytest.mark.parametrize("device, message", [
    (JETSON_ORIN, None),
    (DeviceCaps("10.3.0.30", "8.7"), None),  # the patch level may differ
    (DeviceCaps("10.7.0", "8.7"), (r"built with TensorRT 10\.3\.0 and needs TensorRT 10\.3\.x; this device has "
                                   r"TensorRT 10\.7\.0: rebuild the engine on this device")),
    (DeviceCaps("8.6.2", "8.7"), r"needs TensorRT 10\.3\.x; this device has TensorRT 8\.6\.2"),
    (DeviceCaps("10.3.0", "8.6"), r"built for GPU compute capability 8\.7; this device's GPU is 8\.6"),
    (DeviceCaps("10.3.0", None), r"compute capability 8\.7; this device's GPU is absent"),
    (DeviceCaps(None, None, ("CPUExecutionProvider",)), (r"needs TensorRT 10\.3\.0 on a GPU of compute "
                                                         r"capability 8\.7; this device has no TensorRT")),
])
def test_engines_run_only_where_they_were_built(tmp_path, device, message):
    path, m = artifact(tmp_path)
    if message is None:
        assert verify_artifact(path, device=device) == m
    else:
        with pytest.raises(IncompatibleArtifact, match=message) as info:
            verify_artifact(path, device=device)
        assert str(path) in str(info.value)


@pytest.mark.parametrize("providers, ok", [(("CPUExecutionProvider",), True), ((), False)])
def test_onnx_needs_onnxruntime(providers, ok):
    m = manifest(format="onnx", tensorrt_version=None, gpu_compute_capability=None)
    if ok:
        check_compatible(m, DeviceCaps(onnxruntime_providers=providers))
    else:
        with pytest.raises(IncompatibleArtifact, match="needs onnxruntime; this device has none"):
            check_compatible(m, DeviceCaps(onnxruntime_providers=providers))


def test_this_machine_is_probed_for_real():
    caps = probe_device()
    assert "CPUExecutionProvider" in caps.onnxruntime_providers
    try:
        import tensorrt
    except ImportError:
        assert caps.tensorrt_version is None
    else:
        assert caps.tensorrt_version == tensorrt.__version__


@pytest.mark.parametrize("major_minor, text", [((8, 7), "8.7"), ((12, 0), "12.0"), ((7, 2), "7.2")])
def test_compute_capability_text(major_minor, text):
    assert compute_capability(major_minor) == text


# ---- manifests made from ONNX files ----

def test_manifest_for_our_converted_bundled_model(bundled_model):
    m = manifest_for_onnx(bundled_model)
    assert (m.format, m.layout, m.precision, m.input_size, m.opset) == ("onnx", "darknet-yolo", "fp32", (416, 416), 13)
    assert len(m.class_names) == 80 and m.class_names[:3] == ("person", "bicycle", "car")
    assert m.source_sha256 == FILES[WEIGHTS]
    assert m.file_size == bundled_model.stat().st_size
    assert m.file_sha256 == hashlib.sha256(bundled_model.read_bytes()).hexdigest()
    assert m.batch_range == (1, None) and m.resolution_range == ((32, 32), None)  # batch, height, width dynamic
    assert m.decode_params["masks"] == [[3, 4, 5], [1, 2, 3]] and len(m.decode_params["anchors"]) == 6
    assert m.producer.startswith("edgefleet.models.darknet") and "onnx" in m.tool_versions
    assert parse_manifest(to_json(m)) == m


def ultralytics_onnx(path, metadata: dict, shape=(1, 3, 640, 480), elem=TensorProto.FLOAT):
    """A one-node ONNX carrying metadata the way Ultralytics' exporter writes it (str() of each value)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["output0"])], "yolo",
        [helper.make_tensor_value_info("images", elem, list(shape))],
        [helper.make_tensor_value_info("output0", elem, list(shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {k: str(v) for k, v in metadata.items()})
    onnx.save(model, path)
    return path


ULTRA = {"author": "Ultralytics", "version": "8.3.40", "task": "detect", "stride": 32, "batch": 1,
         "imgsz": [640, 480], "names": {0: "person", 1: "bicycle", 2: "car"}, "end2end": False,
         "args": {"batch": 1, "half": False, "dynamic": False, "nms": False}}


@pytest.mark.parametrize("changes, shape, elem, expected", [
    ({}, (1, 3, 640, 480), TensorProto.FLOAT, ("ultralytics", "fp32", (480, 640), (1, 1), None)),
    ({"end2end": True}, (1, 3, 640, 480), TensorProto.FLOAT, ("end2end", "fp32", (480, 640), (1, 1), None)),
    ({"args": {"nms": True}}, (1, 3, 640, 480), TensorProto.FLOAT, ("end2end", "fp32", (480, 640), (1, 1), None)),
    ({}, (1, 3, 640, 480), TensorProto.FLOAT16, ("ultralytics", "fp16", (480, 640), (1, 1), None)),
    ({"imgsz": 320}, ("batch", 3, "height", "width"), TensorProto.FLOAT,
     ("ultralytics", "fp32", (320, 320), (1, None), ((32, 32), None))),
])
def test_manifest_for_an_ultralytics_export(tmp_path, changes, shape, elem, expected):
    path = ultralytics_onnx(tmp_path / "yolo.onnx", {**ULTRA, **changes}, shape, elem)
    m = manifest_for_onnx(path)
    assert (m.layout, m.precision, m.input_size, m.batch_range, m.resolution_range) == expected
    assert m.class_names == ("person", "bicycle", "car") and m.opset == 17
    assert m.producer == "ultralytics 8.3.40" and m.tool_versions["ultralytics"] == "8.3.40"
    assert m.source_sha256 is None


@pytest.mark.parametrize("metadata, message", [
    ({}, r"no detector metadata .*keys: \[\]"),
    ({**ULTRA, "task": "segment"}, r"task 'segment' is not supported"),
    ({**ULTRA, "names": "{0: person}"}, r"metadata names='\{0: person\}' is not a Python literal"),
    ({**ULTRA, "names": {1: "a", 2: "b"}}, r"names must map class indices 0..n-1 to names, got .\{1: .a."),
])
def test_onnx_files_we_cannot_describe(tmp_path, metadata, message):
    with pytest.raises(UnsupportedModel, match=message):
        manifest_for_onnx(ultralytics_onnx(tmp_path / "m.onnx", metadata))


def test_a_file_that_is_not_onnx(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"\x08\x01garbage")
    with pytest.raises(UnsupportedModel, match="not a readable ONNX file"):
        manifest_for_onnx(tmp_path / "m.onnx")
