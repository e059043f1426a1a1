"""The NCNN backend and its converter on tiny Darknet models: pnnx conversion and its sidecar,
config, failures at start, and the same outputs and boxes as the onnxruntime backend."""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgefleet.models.backends import BACKENDS, create_detector, parse_config
from edgefleet.models.backends.ncnn import NcnnConfig
from edgefleet.models.darknet import convert as darknet_convert
from edgefleet.models.errors import BackendUnavailable, InvalidConfig, ModelError, ModelNotFound, UnsupportedModel
from edgefleet.models.manifest import manifest_for_onnx, sha256_file, write_manifest
from edgefleet.models.ncnn_convert import convert, output_blobs, quantize, read_sidecar, sidecar_path
from edgefleet.models.ncnn_int8 import kl_threshold, read_param, rewrite
from edgefleet.models.yolo import letterbox_batch

from .test_models_backends import OBJECT_SCORE, constant_weights, frame
from .test_models_darknet import TINY_CFG, tiny_weights

pytestmark = pytest.mark.cpu_extra  # the cpu extra: make test installs it, make test-fast leaves it out


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    onnx.save(darknet_convert(TINY_CFG, constant_weights(), ["cat", "dog"]), folder / "constant.onnx")
    onnx.save(darknet_convert(TINY_CFG, tiny_weights(3)[0], ["cat", "dog"]), folder / "random.onnx")
    return folder


@pytest.fixture(scope="module")
def constant_model(onnx_models, tmp_path_factory):
    """Every cell sees a 'dog' (tests/unit/test_models_backends.py): the boxes are known."""
    return convert(onnx_models / "constant.onnx", tmp_path_factory.mktemp("ncnn"), input_size=(32, 32))[0]


@pytest.fixture(scope="module")
def random_model(onnx_models, tmp_path_factory):
    """Random weights: outputs that depend on every pixel, for comparing runtimes number by number."""
    return convert(onnx_models / "random.onnx", tmp_path_factory.mktemp("ncnn"), input_size=(32, 32))[0]


# ---- the converter ----

def test_convert_writes_param_bin_and_sidecar_only(onnx_models, tmp_path):
    param, weights = convert(onnx_models / "random.onnx", tmp_path, input_size=(64, 32))
    assert (param.name, weights.name) == ("random.ncnn.param", "random.ncnn.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["random.ncnn.bin", "random.ncnn.json", "random.ncnn.param"]
    sidecar = read_sidecar(param)
    source = onnx.load(str(onnx_models / "random.onnx"))
    assert sidecar.metadata == {p.key: p.value for p in source.metadata_props}
    assert (sidecar.input, sidecar.traced_size, sidecar.precision) == ("in0", (64, 32), "fp32")
    assert output_blobs(param) == ("in0", sidecar.outputs) and len(sidecar.outputs) == len(source.graph.output)
    # float32 weights (pnnx would store fp16 by default): at least 4 bytes per ONNX parameter
    parameters = sum(np.prod(t.dims) for t in source.graph.initializer if len(t.dims) > 1)
    assert weights.stat().st_size >= 4 * parameters


def test_convert_takes_paths_relative_to_the_working_directory(onnx_models, tmp_path, monkeypatch):
    """pnnx runs in a folder of its own: the paths the user typed must still name the files."""
    shutil.copy(onnx_models / "random.onnx", tmp_path / "random.onnx")
    monkeypatch.chdir(tmp_path)
    param, weights = convert(Path("random.onnx"), Path("out"), input_size=(32, 32))
    assert param == Path("out/random.ncnn.param") and param.is_file() and weights.is_file()


@pytest.mark.parametrize("content, error, message", [
    (None, ModelNotFound, "does not exist"),
    (b"not onnx", UnsupportedModel, "is not an ONNX model"),
])
def test_convert_refuses_what_is_not_an_onnx_model(tmp_path, content, error, message):
    path = tmp_path / "m.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=message):
        convert(path, tmp_path / "out", input_size=(32, 32))


def test_convert_refuses_a_size_that_is_not_a_multiple_of_32(onnx_models, tmp_path):
    with pytest.raises(InvalidConfig, match=r"multiples of 32, got \(30, 32\)"):
        convert(onnx_models / "random.onnx", tmp_path, input_size=(30, 32))


# ---- registry, config, failures at start ----

def test_registered_with_its_defaults():
    assert "ncnn" in BACKENDS
    config = parse_config({"type": "ncnn", "model": "m.param"})
    assert isinstance(config, NcnnConfig)
    assert (config.threads, config.vulkan, config.fp16, config.weights) == (None, False, False, None)


@pytest.mark.parametrize("data, message", [
    ({"type": "ncnn", "model": "m.param", "num_threads": 2}, "num_threads: Extra inputs are not permitted"),
    ({"type": "ncnn", "model": "m.param", "threads": 0}, "threads: .*got 0"),
    ({"type": "ncnn", "model": "m.param", "input_size": [320, 300]}, "input_size: .*multiples of 32"),
])
def test_config_typos_name_the_field_and_value(data, message):
    with pytest.raises(InvalidConfig, match=message):
        parse_config(data)


def test_without_ncnn_it_fails_at_start_saying_how_to_get_it(constant_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "ncnn", None)  # what `import ncnn` meets when it is not installed
    with pytest.raises(BackendUnavailable, match=r"needs the ncnn package installed \(pip install 'edgefleet\[cpu\]'"):
        create_detector({"type": "ncnn", "model": constant_model})


@pytest.mark.parametrize("remove, error, message", [
    (".param", ModelNotFound, r"constant.ncnn.param does not exist"),
    (".bin", ModelNotFound, r"constant.ncnn.bin does not exist"),
    (".json", ModelNotFound, r"constant.ncnn.json is missing: NCNN files carry no metadata"),
])
def test_missing_files_fail_at_start(constant_model, tmp_path, remove, error, message):
    for suffix in (".param", ".bin", ".json"):
        shutil.copy(constant_model.with_suffix(suffix), tmp_path / ("constant.ncnn" + suffix))
    (tmp_path / ("constant.ncnn" + remove)).unlink()
    with pytest.raises(error, match=message):
        create_detector({"type": "ncnn", "model": tmp_path / "constant.ncnn.param"})


@pytest.mark.parametrize("damage, error, message", [
    ("param", UnsupportedModel, "ncnn cannot read .* as an NCNN param file"),
    ("bin", UnsupportedModel, "ncnn cannot load the weights .*wrong or truncated"),
    ("json", ModelError, "is not an NCNN sidecar"),
])
def test_damaged_files_fail_at_start(constant_model, tmp_path, damage, error, message):
    for suffix in (".param", ".bin", ".json"):
        shutil.copy(constant_model.with_suffix(suffix), tmp_path / ("m.ncnn" + suffix))
    target = tmp_path / f"m.ncnn.{damage}"
    if damage == "bin":
        target.write_bytes(target.read_bytes()[:100])
    elif damage == "json":
        target.write_text(json.dumps({"input": "in0"}))
    else:
        target.write_text("not a param file\n")
    with pytest.raises(error, match=message):
        create_detector({"type": "ncnn", "model": tmp_path / "m.ncnn.param"})


def test_vulkan_without_a_gpu_runs_on_the_cpu(constant_model, caplog):
    with create_detector({"type": "ncnn", "model": constant_model, "vulkan": True}) as det:
        import ncnn
        assert det.device == ("vulkan" if ncnn.get_gpu_count() else "cpu")
        assert len(det.detect(frame(32, 32))) > 0


# ---- the same answers as onnxruntime ----

def assert_same_boxes(ours, theirs) -> None:
    """Equal boxes, scores and classes, in any order (boxes of equal scores may come out either way)."""
    def ordered(dets):
        order = np.lexsort([*np.round(dets.xyxy, 2).T[::-1], dets.class_id])
        return dets.xyxy[order], dets.confidence[order], dets.class_id[order]

    (xyxy, score, cls), (ref_xyxy, ref_score, ref_cls) = ordered(ours), ordered(theirs)
    np.testing.assert_array_equal(cls, ref_cls)
    np.testing.assert_allclose(xyxy, ref_xyxy, atol=1e-3)
    np.testing.assert_allclose(score, ref_score, atol=1e-5)


def test_known_boxes_in_source_pixels(constant_model):
    with create_detector({"type": "ncnn", "model": constant_model, "threads": 1}) as det:
        assert det.names == ["cat", "dog"] and det.input_size == (32, 32) and det.last_inference_ms > 0
        dets = det.detect(frame(64, 64))
    assert set(dets.labels(["cat", "dog"])) == {"dog"}
    np.testing.assert_allclose(dets.confidence, OBJECT_SCORE, rtol=1e-5)
    assert dets.xyxy.min() >= 0 and dets.xyxy.max() <= 64


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (96, 64)])
def test_raw_outputs_and_boxes_equal_onnxruntimes(onnx_models, random_model, size):
    options = {"input_size": size, "confidence_threshold": 0.3}
    reference = create_detector({"type": "onnxruntime", "model": onnx_models / "random.onnx", **options})
    det = create_detector({"type": "ncnn", "model": random_model, **options})
    frames = [frame(64, 64), frame(48, 96), frame(120, 40)]
    tensor, _ = letterbox_batch(frames, size)
    for ours, theirs in zip(det.infer(tensor), reference.infer(tensor), strict=True):
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
    for ours, theirs in zip(det.detect_batch(frames), reference.detect_batch(frames), strict=True):
        assert len(ours) == len(theirs) > 0
        assert_same_boxes(ours, theirs)


def test_a_batch_equals_its_frames_one_by_one(random_model):
    det = create_detector({"type": "ncnn", "model": random_model, "confidence_threshold": 0.05})
    frames = [frame(64, 64), frame(32, 32), frame(96, 48), frame(10, 300)]
    batched = det.detect_batch(frames)
    assert len(batched) == 4 and det.detect_batch([]) == []
    for f, dets in zip(frames, batched):
        np.testing.assert_allclose(dets.xyxy, det.detect(f).xyxy, atol=1e-4)
    prepared = det.prepare(frames)
    staged = det.finish(prepared, det.run_prepared(prepared))
    for a, b in zip(staged, batched, strict=True):
        np.testing.assert_array_equal(a.xyxy, b.xyxy)


def test_a_closed_detector_refuses_work(constant_model):
    det = create_detector({"type": "ncnn", "model": constant_model})
    det.close()
    with pytest.raises(ModelError, match="closed"):
        det.detect(frame(32, 32))


def test_sidecar_path_is_beside_the_param_file(tmp_path):
    assert sidecar_path(tmp_path / "a.ncnn.param") == tmp_path / "a.ncnn.json"


# ---- INT8 ----

@pytest.fixture(scope="module")
def int8_model(onnx_models, tmp_path_factory):
    calls = []
    calibration = [frame(64, 64 + 8 * i) for i in range(6)]
    param, weights = quantize(onnx_models / "random.onnx", calibration, tmp_path_factory.mktemp("int8"),
                              input_size=(32, 32), progress=lambda done, total: calls.append((done, total)))
    return param, weights, calls


def test_quantize_writes_int8_convolutions_and_follows_progress(int8_model, random_model):
    param, weights, calls = int8_model
    assert calls == [(i, 6) for i in range(1, 7)]
    assert sorted(p.name for p in param.parent.iterdir()) == [
        "random.ncnn-int8.bin", "random.ncnn-int8.json", "random.ncnn-int8.param"]
    convolutions = [layer for layer in read_param(param)[1] if layer.type == "Convolution"]
    assert convolutions and all("8=2" in layer.tokens for layer in convolutions)
    assert weights.stat().st_size < random_model.with_suffix(".bin").stat().st_size
    sidecar = read_sidecar(param)
    assert sidecar.precision == "int8" and sidecar.calibration["frames"] == 6
    assert sidecar.calibration["method"] == "max" and len(sidecar.calibration["tensors_sha256"]) == 64


def test_int8_outputs_stay_near_fp32s(int8_model, random_model):
    fp32 = create_detector({"type": "ncnn", "model": random_model})
    int8 = create_detector({"type": "ncnn", "model": int8_model[0]})
    assert int8.precision == "int8"
    tensor, _ = letterbox_batch([frame(64, 64), frame(40, 80)], (32, 32))
    for ours, theirs in zip(int8.infer(tensor), fp32.infer(tensor), strict=True):
        assert not np.array_equal(ours, theirs)  # int8 arithmetic really ran
        spread = float(np.abs(theirs).max())
        assert float(np.abs(ours - theirs).max()) < 0.1 * spread


def test_quantize_accepts_letterboxed_tensors_and_refuses_other_shapes(onnx_models, tmp_path):
    tensor, _ = letterbox_batch([frame(64, 64)], (32, 32))
    param, _ = quantize(onnx_models / "random.onnx", [tensor], tmp_path, input_size=(32, 32))
    assert read_sidecar(param).calibration["frames"] == 1
    with pytest.raises(InvalidConfig, match=r"calibration item 0 is float32 \(1, 3, 64, 64\)"):
        quantize(onnx_models / "random.onnx", [letterbox_batch([frame(64, 64)], (64, 64))[0]], tmp_path,
                 input_size=(32, 32))
    with pytest.raises(InvalidConfig, match="at least one calibration frame"):
        quantize(onnx_models / "random.onnx", [], tmp_path, input_size=(32, 32))


def test_kl_threshold_clips_a_long_tail():
    rng = np.random.default_rng(0)
    values = np.abs(np.concatenate([rng.normal(0, 1, 100_000), [40.0]]))  # one outlier far out
    histogram = np.histogram(values, bins=2048, range=(0, values.max()))[0]
    assert 128 <= kl_threshold(histogram) < 400  # near 4-5 sigma of 40: the outlier is clipped
    flat = np.ones(2048)
    assert kl_threshold(flat) > 1900  # nothing to gain by clipping a uniform histogram


def test_rewrite_refuses_weights_that_do_not_fit_the_param(random_model, tmp_path):
    bigger = tmp_path / "m.bin"
    bigger.write_bytes(random_model.with_suffix(".bin").read_bytes() + b"\0" * 4)
    with pytest.raises(UnsupportedModel, match="bytes after the last layer's weights"):
        rewrite(random_model, bigger, {}, tmp_path / "o.param", tmp_path / "o.bin")
    shorter = tmp_path / "s.bin"
    shorter.write_bytes(random_model.with_suffix(".bin").read_bytes()[:-8])
    with pytest.raises(UnsupportedModel, match="ends early"):
        rewrite(random_model, shorter, {}, tmp_path / "o.param", tmp_path / "o.bin")


def test_a_manifest_beside_the_param_file_is_checked(onnx_models, constant_model, tmp_path):
    for suffix in (".param", ".bin", ".json"):
        shutil.copy(constant_model.with_suffix(suffix), tmp_path / ("m.ncnn" + suffix))
    param = tmp_path / "m.ncnn.param"
    source = manifest_for_onnx(onnx_models / "constant.onnx")
    manifest = dataclasses.replace(source, format="ncnn", file_sha256=sha256_file(param),
                                   file_size=param.stat().st_size, labels={"runtime": "ncnn", "device": "cpu"})
    write_manifest(manifest, param)
    assert create_detector({"type": "ncnn", "model": param}).names == ["cat", "dog"]
    write_manifest(dataclasses.replace(manifest, format="onnx"), param)
    with pytest.raises(UnsupportedModel, match="its manifest says format 'onnx'"):
        create_detector({"type": "ncnn", "model": param})
    write_manifest(manifest, param)
    param.write_text(param.read_text().replace("7767517", "7767517 "))
    with pytest.raises(ModelError, match="manifest"):
        create_detector({"type": "ncnn", "model": param})


def test_load_detector_runs_a_param_file_on_ncnn(constant_model):
    from edgefleet.models import load_detector

    with load_detector(constant_model) as det:
        assert type(det).__name__ == "NcnnDetector" and det.names == ["cat", "dog"]


def test_the_agent_gives_a_param_file_its_threads(constant_model):
    """`edge-agent run --model x.param --threads 1`: the agent names the option as this backend does."""
    from edgefleet.agent.build import load_detector as agent_detector
    from edgefleet.agent.config import AgentConfig

    config = AgentConfig.model_validate({"controller": "127.0.0.1:1", "source": ["0"], "threads": 1})
    with agent_detector(constant_model, config) as det:
        assert type(det).__name__ == "NcnnDetector"
