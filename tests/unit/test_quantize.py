"""Agreement math on crafted boxes; frame splitting and hashing; ONNX Runtime QDQ on a tiny real model."""
from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest

from edgefleet.models.agreement import AgreementCounter, compare, match_frame
from edgefleet.models.detections import Detections
from edgefleet.models.errors import (
    BackendUnavailable,
    IncompatibleArtifact,
    InvalidConfig,
    ModelNotFound,
    UnsupportedModel,
)
from edgefleet.models.manifest import (
    DeviceCaps,
    check_compatible,
    manifest_path,
    parse_manifest,
    read_manifest,
    to_json,
)
from edgefleet.models.pipeline import agreement_lines, cmd_darknet
from edgefleet.models.quantize import (
    TextProgress,
    calibration_tensors,
    convert_artifact,
    convert_format,
    frames_sha256,
    quant_format,
    quantize_artifact,
    split_frames,
)
from edgefleet.models.yolo import letterbox_batch

from .test_models_darknet import TINY_CFG, tiny_weights


def dets(boxes, scores, classes) -> Detections:
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                      np.array(classes, np.int32))


# ---- agreement ----

def test_identical_detections_agree_fully():
    a = dets([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.5], [0, 1])
    result = compare([(a, a)])
    assert (result.f1, result.mean_iou, result.score_shift, result.matches) == (1.0, 1.0, 0.0, 2)


def test_a_shifted_box_counts_its_iou_and_score_shift():
    reference = dets([[0, 0, 10, 10]], [0.8], [0])
    candidate = dets([[0, 0, 10, 8]], [0.7], [0])  # IoU 80/100
    result = compare([(reference, candidate)])
    assert result.f1 == 1.0
    assert result.mean_iou == pytest.approx(0.8)
    assert result.score_shift == pytest.approx(-0.1)
    assert result.score_shift_abs == pytest.approx(0.1)


def test_below_half_iou_or_another_class_is_no_match():
    reference = dets([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.9], [0, 0])
    candidate = dets([[0, 0, 10, 4], [50, 50, 60, 60]], [0.9, 0.9], [0, 3])  # IoU 0.4; same box, class 3
    result = compare([(reference, candidate)])
    assert result.matches == 0 and result.f1 == 0.0
    assert result.mean_iou == 1.0 and result.score_shift == 0.0  # nothing matched, nothing measured


def test_matching_is_greedy_by_iou_and_one_to_one():
    reference = dets([[0, 0, 10, 10]], [0.9], [0])
    candidate = dets([[0, 0, 10, 9], [0, 0, 10, 10]], [0.5, 0.6], [0, 0])  # the exact one wins
    assert match_frame(reference, candidate) == [(0, 1, 1.0)]
    result = compare([(reference, candidate)])
    assert result.f1 == pytest.approx(2 * 1 / 3)  # one extra candidate box
    assert result.score_shift == pytest.approx(-0.3)


def test_f1_counts_over_all_frames_together():
    box = dets([[0, 0, 10, 10]], [0.5], [2])
    counter = AgreementCounter()
    counter.add(box, box)
    counter.add(box, Detections.empty())  # a missed object
    counter.add(Detections.empty(), Detections.empty())
    result = counter.result()
    assert (result.frames, result.reference_boxes, result.candidate_boxes) == (3, 2, 1)
    assert result.f1 == pytest.approx(2 / 3)


def test_no_boxes_anywhere_is_full_agreement():
    assert compare([(Detections.empty(), Detections.empty())]).f1 == 1.0


# ---- frames ----

@pytest.fixture
def frames_dir(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        cv2.imwrite(str(folder / f"f{i:02d}.png"), rng.integers(0, 255, (48 + 8 * i, 64, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_split_holds_the_tail_back(frames_dir):
    split = split_frames(frames_dir, calib_count=5)
    assert [p.name for p in split.calibration] == [f"f{i:02d}.png" for i in range(5)]
    assert [p.name for p in split.held] == ["f05.png", "f06.png", "f07.png"]
    assert len(split_frames(frames_dir).calibration) == 6  # three quarters by default


def test_split_errors_name_the_problem(frames_dir, tmp_path):
    with pytest.raises(InvalidConfig, match="all used to calibrate"):
        split_frames(frames_dir, calib_count=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFound, match="has no images"):
        split_frames(tmp_path / "empty")
    with pytest.raises(ModelNotFound, match="does not exist"):
        split_frames(tmp_path / "missing")
    with pytest.raises(InvalidConfig, match="--calib-count"):
        split_frames(frames_dir, calib_count=0)
    with pytest.raises(InvalidConfig, match="--held-count must be >= 1, got 0"):
        split_frames(frames_dir, held_count=0)  # not "all of them"
    held = split_frames(frames_dir, holdout_dir=frames_dir, calib_count=2)
    assert len(held.calibration) == 2 and len(held.held) == 8


def test_frames_hash_is_order_free_and_content_bound(frames_dir):
    paths = sorted(frames_dir.glob("*.png"))
    assert frames_sha256(paths) == frames_sha256(paths[::-1])
    assert frames_sha256(paths) != frames_sha256(paths[:-1])
    before = frames_sha256(paths)
    paths[0].write_bytes(paths[0].read_bytes() + b"\0")
    assert frames_sha256(paths) != before


def test_calibration_tensors_are_the_backends_letterbox(frames_dir):
    frame = cv2.imread(str(frames_dir / "f03.png"))
    (tensor,) = calibration_tensors([frame], (64, 32))
    assert tensor.shape == (1, 3, 32, 64) and tensor.dtype == np.float32
    np.testing.assert_array_equal(tensor, letterbox_batch([frame], (64, 32))[0])


def test_progress_writes_quarters_when_piped(tmp_path):
    with (tmp_path / "err").open("w") as stream:
        progress = TextProgress("calibration frames", stream)
        for done in range(1, 9):
            progress(done, 8)
    lines = (tmp_path / "err").read_text().split()
    assert "8/8" in lines and "100%" in lines


def test_unknown_format_is_refused():
    with pytest.raises(InvalidConfig, match="unknown quantized format 'tflite-int8'"):
        quant_format("tflite-int8")
    with pytest.raises(InvalidConfig, match="unknown quantized format 'openvino'; known: onnx-int8, openvino-int8"):
        quant_format("openvino")  # an FP32 format: `convert` makes it
    with pytest.raises(InvalidConfig, match="unknown FP32 format 'ncnn-int8'; known: openvino, ncnn"):
        convert_format("ncnn-int8")


# ---- quantize a tiny real model ----

@pytest.fixture
def tiny_onnx(tmp_path):
    (tmp_path / "tiny.cfg").write_text(TINY_CFG)
    (tmp_path / "tiny.weights").write_bytes(tiny_weights()[0])
    (tmp_path / "tiny.names").write_text("cat\ndog\n")
    return cmd_darknet(tmp_path / "tiny.cfg", tmp_path / "tiny.weights", tmp_path / "tiny.names",
                       tmp_path / "tiny.onnx").artifact


def test_onnx_int8_is_qdq_with_a_manifest(tiny_onnx, frames_dir, tmp_path):
    seen = []
    q = quantize_artifact(tiny_onnx, frames_dir, "onnx-int8", calib_count=6, out=tmp_path / "q" / "tiny-int8.onnx",
                          progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (6, 6)
    model = onnx.load(str(q.artifact))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert {p.key for p in model.metadata_props} >= {"format", "anchors", "names"}
    m = read_manifest(q.artifact)
    assert (m.format, m.precision, m.labels) == ("onnx", "int8", {"runtime": "onnxruntime", "device": "cpu"})
    assert m.calibration["frames"] == 6 and m.calibration["held_frames"] == 2
    assert m.calibration["frames_sha256"] == frames_sha256(sorted(frames_dir.glob("*.png"))[:6])
    assert m.agreement["frames"] == 2.0 and 0.0 <= m.agreement["f1"] <= 1.0
    assert m.source_sha256 == read_manifest(tiny_onnx).file_sha256
    assert any(line.startswith("agreement with FP32 source on 2 held frames") for line in agreement_lines(m))


def test_a_format_whose_module_is_absent_says_how_to_get_it(tiny_onnx, frames_dir, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "edgefleet.models.ncnn_convert", None)  # as if not installed
    with pytest.raises(BackendUnavailable, match="ncnn-int8 is not available"):
        quantize_artifact(tiny_onnx, frames_dir, "ncnn-int8", calib_count=6)
    with pytest.raises(BackendUnavailable, match="ncnn is not available"):
        convert_artifact(tiny_onnx, frames_dir, "ncnn")


def test_only_an_fp32_onnx_source_converts(tiny_onnx, frames_dir, tmp_path):
    q = quantize_artifact(tiny_onnx, frames_dir, "onnx-int8", calib_count=6, out=tmp_path / "tiny-int8.onnx")
    with pytest.raises(UnsupportedModel, match="tiny-int8.onnx is onnx int8; start from an FP32 ONNX model"):
        convert_artifact(q.artifact, frames_dir, "openvino")


# ---- manifest fields ----

def test_manifests_without_the_new_fields_still_load(tiny_onnx):
    data = json.loads(manifest_path(tiny_onnx).read_text())
    for name in ("labels", "calibration", "agreement", "companions"):
        data.pop(name)
    m = parse_manifest(json.dumps(data))
    assert (m.labels, m.calibration, m.agreement, m.companions) == ({}, {}, {}, {})
    assert parse_manifest(to_json(m)) == m


def test_cpu_runtime_formats_need_their_runtime(tiny_onnx):
    import dataclasses

    m = dataclasses.replace(read_manifest(tiny_onnx), format="openvino-ir", precision="int8")
    check_compatible(m, DeviceCaps(runtimes=("openvino",)))
    with pytest.raises(IncompatibleArtifact, match="needs openvino; this device has none"):
        check_compatible(m, DeviceCaps(onnxruntime_providers=("CPUExecutionProvider",)))


def test_companion_files_are_verified_with_the_artifact(tiny_onnx, tmp_path):
    import dataclasses

    from edgefleet.models.errors import ArtifactMismatch
    from edgefleet.models.manifest import sha256_file, verify_artifact, write_manifest

    weights = tiny_onnx.with_name("tiny.bin")
    weights.write_bytes(b"weights")
    m = dataclasses.replace(read_manifest(tiny_onnx), companions={"tiny.bin": sha256_file(weights)})
    write_manifest(m, tiny_onnx)
    assert verify_artifact(tiny_onnx).companions == {"tiny.bin": sha256_file(weights)}
    weights.write_bytes(b"weights, changed")
    with pytest.raises(ArtifactMismatch, match="tiny.bin: sha256 does not match"):
        verify_artifact(tiny_onnx)
    weights.unlink()
    with pytest.raises(ArtifactMismatch, match="tiny.bin beside it .* it is missing"):
        verify_artifact(tiny_onnx)
