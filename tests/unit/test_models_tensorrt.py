"""The TensorRT backend and engine builder: everything that runs without the SDK, for real.

Tests marked `gpu` build and run real engines; they are skipped where tensorrt/pycuda do not import.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import logging

import cv2
import numpy as np
import onnx
import pytest

from edgefleet.models import yolo
from edgefleet.models.backends import BACKENDS, create_detector, parse_config
from edgefleet.models.backends.tensorrt import (
    SDK_MISSING,
    LoggingBridge,
    TensorRTConfig,
    TensorSpec,
    decoder_for,
    max_batch,
    resolve_input_shape,
    severity_level,
    tensor_specs,
    volume,
)
from edgefleet.models.darknet import convert
from edgefleet.models.errors import ArtifactMismatch, BackendUnavailable, InvalidConfig, ModelNotFound, UnsupportedModel
from edgefleet.models.manifest import (
    manifest_for_onnx,
    read_manifest,
    verify_artifact,
    write_manifest,
)
from edgefleet.models.tensorrt_build import (
    BuildProgress,
    CalibrationBatches,
    CalibrationFeed,
    Profile,
    build_engine,
    engine_manifest,
    list_images,
    make_profile,
    onnx_input_shape,
    source_manifest,
)

from .test_models_backends import constant_weights
from .test_models_darknet import TINY_CFG

HAS_SDK = all(importlib.util.find_spec(m) is not None for m in ("tensorrt", "pycuda"))
needs_sdk = pytest.mark.skipif(not HAS_SDK, reason="tensorrt/pycuda are not importable here (run on a Jetson "
                                                    "or an NVIDIA GPU host)")


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """models.darknet's tiny test network (cat/dog, 32x32, dynamic batch and size) with its manifest."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(convert(TINY_CFG, constant_weights(), ["cat", "dog"]), path)
    write_manifest(manifest_for_onnx(path), path)
    return path


@pytest.fixture(scope="module")
def frames_dir(vtest, tmp_path_factory):
    """7 real frames of vtest.avi as image files (jpg and png), plus files that are not usable images."""
    folder = tmp_path_factory.mktemp("frames")
    capture = cv2.VideoCapture(str(vtest))
    for i in range(7):
        ok, frame = capture.read()
        assert ok, f"cannot read frame {i} of {vtest}"
        cv2.imwrite(str(folder / f"frame{i:02d}.{'png' if i % 2 else 'jpg'}"), frame)
    capture.release()
    (folder / "notes.txt").write_text("not an image")
    (folder / "frame03b.jpg").write_bytes(b"not really a jpeg")  # sorts between frame03 and frame04
    return folder


# ---- config and registration ----

def test_the_plugin_registers_by_key():
    assert BACKENDS["tensorrt"].BACKEND_KEY == "tensorrt"
    config = parse_config({"type": "tensorrt", "model": "m.engine"})
    assert isinstance(config, TensorRTConfig)
    assert (config.input_size, config.device, config.confidence_threshold) == (None, 0, 0.25)


@pytest.mark.parametrize("data, message", [
    ({"type": "tensorrt"}, "model: Field required"),
    ({"type": "tensorrt", "model": "m", "engine": "m"}, "engine: Extra inputs are not permitted"),
    ({"type": "tensorrt", "model": "m", "device": -1}, r"device: .*got -1"),
    ({"type": "tensorrt", "model": "m", "input_size": [640, 500]}, "input_size: .*multiples of 32"),
    ({"type": "tensorrt", "model": "m", "iou_threshold": 2}, "iou_threshold: .*got 2"),
])
def test_bad_configs_name_the_field_and_value(data, message):
    with pytest.raises(InvalidConfig, match=message):
        parse_config(data)


@pytest.mark.skipif(HAS_SDK, reason="tensorrt and pycuda are installed here")
def test_without_the_sdk_the_backend_fails_at_start_saying_how_to_get_it(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine")
    with pytest.raises(BackendUnavailable, match="tensorrt/pycuda are not installed") as info:
        create_detector({"type": "tensorrt", "model": engine})
    assert SDK_MISSING in str(info.value)
    assert "python3-libnvinfer" in str(info.value) and "--system-site-packages" in str(info.value)
    assert "No module named" in str(info.value)  # the real import error is kept


# ---- TensorRT's logger into logging ----

@pytest.mark.parametrize("severity, level", [
    (0, logging.CRITICAL), (1, logging.ERROR), (2, logging.WARNING), (3, logging.INFO), (4, logging.DEBUG),
    (9, logging.WARNING), ("nonsense", logging.WARNING), (None, logging.WARNING),
])
def test_severities_map_to_logging_levels(severity, level):
    assert severity_level(severity) == level


def test_messages_reach_logging_at_their_level_and_are_filtered_there(caplog):
    bridge = LoggingBridge(logging.getLogger("test.tensorrt.native"))
    with caplog.at_level(logging.INFO, logger="test.tensorrt.native"):
        bridge.log(1, "[E] engine deserialization failed")
        bridge.log(3, "[MemUsageChange] Init CUDA")
        bridge.log(4, "verbose tactic timing")  # below INFO: dropped
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "[E] engine deserialization failed"), (logging.INFO, "[MemUsageChange] Init CUDA")]


# ---- the I/O tensor table and dynamic shapes ----

PROFILE = ((1, 3, 320, 320), (2, 3, 640, 640), (8, 3, 1280, 1280))


@pytest.mark.parametrize("rows, expected", [
    ([("images", True, (-1, 3, -1, -1), "FLOAT", PROFILE), ("head0", False, (-1, 21, -1, -1), "FLOAT", None)],
     ("images", [("head0", np.float32)])),
    ([("images", True, (1, 3, 640, 640), "HALF", None), ("b", False, (1, 84, 8400), "HALF", None),
      ("a", False, (1, 300, 6), "FLOAT", None)],
     ("images", [("b", np.float16), ("a", np.float32)])),  # engine order is kept
])
def test_io_table_becomes_specs(rows, expected):
    inp, outputs = tensor_specs(rows)
    assert inp.name == expected[0] and inp.is_input
    assert [(o.name, o.dtype) for o in outputs] == [(n, np.dtype(d)) for n, d in expected[1]]


@pytest.mark.parametrize("rows, message", [
    ([("images", True, (1, 3, 64, 64), "BF16", None), ("o", False, (1, 2), "FLOAT", None)], r"type BF16; supported"),
    ([("a", True, (1, 3, 64, 64), "FLOAT", None), ("b", True, (1, 3, 64, 64), "FLOAT", None),
      ("o", False, (1, 2), "FLOAT", None)], "one NCHW image input"),
    ([("a", True, (1, 64, 64), "FLOAT", None), ("o", False, (1, 2), "FLOAT", None)], "one NCHW image input"),
    ([("a", True, (1, 3, 64, 64), "FLOAT", None)], "no outputs"),
    ([("a", True, (-1, 3, 64, 64), "FLOAT", None), ("o", False, (1, 2), "FLOAT", None)], "no optimisation profile"),
])
def test_engines_we_cannot_drive_are_refused(rows, message):
    with pytest.raises(UnsupportedModel, match=message):
        tensor_specs(rows)


DYNAMIC = TensorSpec("images", True, (-1, 3, -1, -1), np.dtype(np.float32), PROFILE)
STATIC = TensorSpec("images", True, (4, 3, 640, 480), np.dtype(np.float32))


@pytest.mark.parametrize("spec, batch, size, expected", [
    (DYNAMIC, 1, (640, 640), (1, 3, 640, 640)),
    (DYNAMIC, 8, (320, 1280), (8, 3, 1280, 320)),
    (DYNAMIC, 9, (640, 640), r"batch 9 is outside the engine's optimisation profile 1\.\.8"),
    (DYNAMIC, 1, (1312, 640), r"width 1312 is outside the engine's optimisation profile 320\.\.1280"),
    (STATIC, 4, (480, 640), (4, 3, 640, 480)),
    (STATIC, 2, (480, 640), r"batch is fixed at 4, asked for 2"),
    (STATIC, 4, (640, 640), r"width is fixed at 480, asked for 640"),
])
def test_input_shapes_resolve_inside_the_profile(spec, batch, size, expected):
    if isinstance(expected, tuple):
        assert resolve_input_shape(spec, batch, size) == expected
    else:
        with pytest.raises(UnsupportedModel, match=expected):
            resolve_input_shape(spec, batch, size)


def test_buffer_sizes():
    assert (max_batch(DYNAMIC), max_batch(STATIC)) == (8, 4)
    assert volume((8, 3, 640, 640)) == 8 * 3 * 640 * 640
    with pytest.raises(UnsupportedModel, match="not resolved"):
        volume((-1, 84, 8400))


def test_darknet_layout_decodes_with_the_manifests_anchors(tiny_onnx):
    decode, nms = decoder_for(read_manifest(tiny_onnx))
    out = [np.zeros((2, 14, 16, 16), np.float32), np.zeros((2, 14, 32, 32), np.float32)]
    out[1][:, 4] = 6.0  # anchor 0 objectness everywhere in head1 (cat logit 0: score ~0.497)
    per_image = decode(out, (32, 32), 0.25)
    assert nms and len(per_image) == 2 and all(len(xyxy) == 32 * 32 for xyxy, _, _ in per_image)


def ultralytics_output() -> np.ndarray:
    """(1, 4 + 2, 3): anchors at (10, 10) 4x4 'cat' 0.9, (20, 20) 8x8 'dog' 0.6, and one below threshold."""
    out = np.zeros((1, 6, 3), np.float32)
    out[0, :, 0] = [10, 10, 4, 4, 0.9, 0.1]
    out[0, :, 1] = [20, 20, 8, 8, 0.2, 0.6]
    out[0, :, 2] = [5, 5, 2, 2, 0.1, 0.1]
    return out


@pytest.mark.parametrize("layout, outputs, expected_nms", [
    ("ultralytics", [ultralytics_output()], True),
    ("end2end", [np.array([[[6, 6, 14, 14, 0.9, 0], [16, 16, 24, 24, 0.6, 1], [0, 0, 0, 0, 0, 0]]], np.float32)],
     False),
])
def test_ultralytics_layouts_decode_with_models_yolo(tiny_onnx, layout, outputs, expected_nms):
    name = {"ultralytics": "decode_ultralytics", "end2end": "decode_end2end"}[layout]
    m = dataclasses.replace(read_manifest(tiny_onnx), layout=layout, decode_params={})
    if not hasattr(yolo, name):
        with pytest.raises(UnsupportedModel, match=f"needs models.yolo.{name}"):
            decoder_for(m)
        return
    decode, nms = decoder_for(m)
    ((xyxy, score, class_id),) = decode(outputs, (32, 32), 0.25)
    assert nms == expected_nms
    np.testing.assert_allclose(xyxy, [[8, 8, 12, 12], [16, 16, 24, 24]] if layout == "ultralytics"
                               else [[6, 6, 14, 14], [16, 16, 24, 24]])
    np.testing.assert_allclose(score, [0.9, 0.6], rtol=1e-6)
    assert class_id.tolist() == [0, 1]


# ---- calibration images, letterboxed as inference does ----

def test_calibration_images_are_listed_sorted_and_limited(frames_dir, tmp_path):
    names = [p.name for p in list_images(frames_dir)]
    assert names == ["frame00.jpg", "frame01.png", "frame02.jpg", "frame03.png", "frame03b.jpg", "frame04.jpg",
                     "frame05.png", "frame06.jpg"]
    assert len(list_images(frames_dir, limit=3)) == 3
    with pytest.raises(ModelNotFound, match="calibration folder .* does not exist"):
        list_images(tmp_path / "nope")


def test_calibration_batches_are_full_letterboxed_and_skip_bad_files(frames_dir, caplog):
    images = list_images(frames_dir)
    batches = CalibrationBatches(images, batch_size=3, input_size=(64, 64))
    with caplog.at_level(logging.INFO, logger="edgefleet.models.tensorrt_build"):
        got = list(batches)
    assert len(batches) == 2 and len(got) == 2 and batches.skipped == 1 and batches.done == 2
    readable = [cv2.imread(str(p)) for p in images if p.name != "frame03b.jpg"]
    for i, batch in enumerate(got):
        assert batch.shape == (3, 3, 64, 64) and batch.dtype == np.float32 and batch.flags.c_contiguous
        expected, _ = yolo.letterbox_batch(readable[3 * i:3 * i + 3], (64, 64))
        np.testing.assert_array_equal(batch, expected)  # exactly what inference feeds the network
    # vtest is 768x576: 64x48 in the middle, gray bars of 8 rows above and below
    np.testing.assert_allclose(got[0][:, :, :8, :], 114 / 255, rtol=1e-6)
    assert got[0][:, :, 8:56, :].std() > 0.05
    messages = [r.getMessage() for r in caplog.records]
    assert "calibration batch 2/2 (6 images)" in messages
    assert any("cannot read" in m and "frame03b.jpg" in m for m in messages)
    assert any("last 1 image(s) do not fill a batch of 3" in m for m in messages)


@pytest.mark.parametrize("count, batch_size, message", [(2, 3, "cannot fill one batch of 3"), (5, 0, ">= 1")])
def test_too_few_calibration_images(frames_dir, count, batch_size, message):
    with pytest.raises(InvalidConfig, match=message):
        CalibrationBatches(list_images(frames_dir)[:count], batch_size, (64, 64))


def test_calibration_cache_is_reused_when_present(frames_dir, tmp_path):
    cache = tmp_path / "calib" / "tiny.cache"
    feed = CalibrationFeed(CalibrationBatches(list_images(frames_dir), 4, (32, 32)), cache, 4)
    assert feed.read_cache() is None  # no cache yet: TensorRT will ask for batches
    assert feed.next_batch().shape == (4, 3, 32, 32)
    assert feed.next_batch() is None  # 7 readable images: one full batch of 4
    feed.write_cache(memoryview(b"TRT-8601-EntropyCalibration2\nimages: 3c010a14\n"))
    assert cache.read_bytes().startswith(b"TRT-8601-EntropyCalibration2")
    assert CalibrationFeed(None, cache, 4).read_cache() == cache.read_bytes()
    cache.write_bytes(b"")
    assert CalibrationFeed(None, cache, 4).read_cache() is None  # an empty cache means calibrate again
    assert CalibrationFeed(None, None, 1).next_batch() is None


# ---- profiles, manifests, arguments: checked before the SDK is needed ----

@pytest.mark.parametrize("dims, batch, sizes, expected", [
    ((None, 3, None, None), (1, 1, 1), ((640, 640),) * 3,
     Profile((1, 3, 640, 640), (1, 3, 640, 640), (1, 3, 640, 640))),
    ((None, 3, None, None), (1, 2, 8), ((320, 256), (640, 480), (1280, 960)),
     Profile((1, 3, 256, 320), (2, 3, 480, 640), (8, 3, 960, 1280))),
    ((1, 3, 640, 480), (1, 1, 1), ((480, 640),) * 3, Profile(*((1, 3, 640, 480),) * 3)),
    ((1, 3, None, None), (1, 4, 4), ((640, 640),) * 3, "fixed batch of 1; asked for 1..4"),
    ((None, 3, 640, 640), (1, 1, 1), ((320, 320), (640, 640), (640, 640)), "fixed height of 640; asked for 320"),
    ((None, 3, None, None), (2, 1, 4), ((640, 640),) * 3, r"1 <= min <= opt <= max, got \(2, 1, 4\)"),
    ((None, 3, None, None), (1, 1, 1), ((640, 600),) * 3, "multiples of 32, got 640x600"),
    ((None, 3, None, None), (1, 1, 1), ((640, 640), (320, 320), (640, 640)), "min <= opt <= max"),
])
def test_optimisation_profiles(dims, batch, sizes, expected):
    if isinstance(expected, Profile):
        assert make_profile(dims, batch, sizes) == expected
    else:
        with pytest.raises(InvalidConfig, match=expected):
            make_profile(dims, batch, sizes)


def test_the_engine_manifest_says_what_it_needs_and_copies_what_it_is(tiny_onnx, tmp_path):
    engine = tmp_path / "tiny.engine"
    engine.write_bytes(b"serialized engine")
    source = source_manifest(tiny_onnx)
    profile = make_profile(onnx_input_shape(tiny_onnx)[1], (1, 2, 4), ((32, 32), (64, 32), (96, 64)))
    m = engine_manifest(source, source.file_sha256, engine, precision="int8", profile=profile,
                        tensorrt_version="10.3.0", compute_capability="8.7")
    write_manifest(m, engine)
    assert verify_artifact(engine) == m
    assert (m.format, m.precision, m.input_size, m.batch_range, m.resolution_range) == (
        "tensorrt-engine", "int8", (64, 32), (1, 4), ((32, 32), (96, 64)))
    assert (m.class_names, m.layout, m.decode_params) == (("cat", "dog"), "darknet-yolo", source.decode_params)
    assert (m.tensorrt_version, m.gpu_compute_capability, m.source_sha256) == ("10.3.0", "8.7", source.file_sha256)


def test_the_onnx_manifest_is_verified_before_a_build(tiny_onnx, tmp_path):
    copy = tmp_path / "tiny.onnx"
    copy.write_bytes(tiny_onnx.read_bytes())
    (tmp_path / "tiny.onnx.manifest.json").write_bytes((tiny_onnx.parent / "tiny.onnx.manifest.json").read_bytes())
    copy.write_bytes(copy.read_bytes() + b"\0")
    with pytest.raises(ArtifactMismatch):
        build_engine(copy, tmp_path / "tiny.engine")


@pytest.mark.parametrize("kwargs, error, message", [
    ({"precision": "int4"}, InvalidConfig, "precision 'int4' is not one of"),
    ({"precision": "int8"}, InvalidConfig, "int8 needs calibration images"),
    ({"precision": "int8", "calibration_images": "nowhere"}, ModelNotFound, "calibration folder nowhere"),
    ({"batch": (1, 4, 2)}, InvalidConfig, "min <= opt <= max"),
])
def test_build_arguments_are_checked_first(tiny_onnx, tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        build_engine(tiny_onnx, tmp_path / "tiny.engine", **kwargs)
    assert not (tmp_path / "tiny.engine").exists()


@pytest.mark.skipif(HAS_SDK, reason="tensorrt and pycuda are installed here")
def test_build_without_the_sdk_fails_clearly(tiny_onnx, frames_dir, tmp_path):
    with pytest.raises(BackendUnavailable, match="tensorrt/pycuda are not installed"):
        build_engine(tiny_onnx, tmp_path / "tiny.engine", "int8", calibration_images=frames_dir,
                     batch=(1, 1, 2), sizes=((32, 32),) * 3)
    assert not (tmp_path / "tiny.engine").exists()


def test_build_progress_is_logged_and_never_cancels(caplog):
    progress = BuildProgress()
    with caplog.at_level(logging.DEBUG, logger="edgefleet.models.tensorrt_build"):
        progress.phase_start("Building engine", None, 3)
        progress.phase_start("Tactic timing", "Building engine", 40)
        assert progress.step_complete("Tactic timing", 0) is True
        progress.phase_finish("Building engine")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:3] == ["build: Building engine (3 steps)", "build: Building engine / Tactic timing (40 steps)",
                            "build: Tactic timing step 1/40"]


# ---- on a GPU with TensorRT (skipped elsewhere) ----

@pytest.mark.gpu
@needs_sdk
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_engine_detects_what_onnxruntime_detects(tiny_onnx, tmp_path, precision):
    engine = tmp_path / f"tiny-{precision}.engine"
    m = build_engine(tiny_onnx, engine, precision, batch=(1, 2, 4), sizes=((32, 32), (64, 64), (96, 96)),
                     timing_cache=tmp_path / "timing.cache")
    assert verify_artifact(engine) == m and (tmp_path / "timing.cache").stat().st_size > 0
    frames = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8) for i in range(5)]
    with create_detector({"type": "tensorrt", "model": engine, "input_size": (64, 64)}) as trt_det, \
            create_detector({"type": "onnxruntime", "model": tiny_onnx, "input_size": (64, 64)}) as ort_det:
        assert trt_det.names == ["cat", "dog"] and trt_det.last_inference_ms > 0
        for got, want in zip(trt_det.detect_batch(frames), ort_det.detect_batch(frames)):  # 5 > max batch 4
            assert len(got) == len(want)
            np.testing.assert_allclose(got.xyxy, want.xyxy, atol=0.05 if precision == "fp16" else 1e-3)


@pytest.mark.gpu
@needs_sdk
def test_gpu_int8_engine_calibrates_once_then_reuses_the_cache(tiny_onnx, frames_dir, tmp_path):
    cache = tmp_path / "tiny.calib"
    build_engine(tiny_onnx, tmp_path / "a.engine", "int8", calibration_images=frames_dir,
                 calibration_cache=cache, sizes=((32, 32),) * 3)
    assert cache.stat().st_size > 0
    m = build_engine(tiny_onnx, tmp_path / "b.engine", "int8", calibration_cache=cache, sizes=((32, 32),) * 3)
    assert m.precision == "int8"
    with create_detector({"type": "tensorrt", "model": tmp_path / "b.engine"}) as det:
        frame = cv2.imread(str(list_images(frames_dir)[0]))
        dets = det.detect(frame)
        assert det.input_size == (32, 32) and det.last_inference_ms > 0
        assert dets.xyxy[:, [0, 2]].max(initial=0) <= frame.shape[1]
