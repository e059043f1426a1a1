"""`edgefleet model quantize` as a user runs it on the bundled model and vtest.avi frames:
quantize -> manifest -> `edgefleet model verify` shows the agreement -> the onnxruntime backend runs it."""
from __future__ import annotations

import json

import cv2
import pytest

from edgefleet.models.backends import create_detector
from edgefleet.models.manifest import manifest_path

from ..conftest import read_frames, require_module, run_cli

pytestmark = pytest.mark.slow

CALIBRATION, HELD = 32, 8


def model_cli(*args: str):
    return run_cli("edgefleet.fleet.cli", "model", *args, timeout=300)


@pytest.fixture(scope="module")
def frames_dir(vtest, tmp_path_factory):
    """40 vtest.avi frames, 10 apart, as JPEGs: the first 32 calibrate, the last 8 are held."""
    folder = tmp_path_factory.mktemp("frames")
    for i, frame in read_frames(vtest, list(range(0, 10 * (CALIBRATION + HELD), 10))).items():
        cv2.imwrite(str(folder / f"vtest-{i:04d}.jpg"), frame)
    return folder


@pytest.fixture(scope="module")
def quantized(bundled_model, frames_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "yolov3-tiny-int8.onnx"
    proc = model_cli("quantize", str(bundled_model), "--calib-dir", str(frames_dir),
                     "--calib-count", str(CALIBRATION), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_quantize_writes_an_int8_artifact_and_its_manifest(quantized, frames_dir, bundled_model):
    out, proc = quantized
    assert f"calibration frames  {CALIBRATION}/{CALIBRATION}  100%" in proc.stderr  # the progress bar
    manifest = json.loads(manifest_path(out).read_text())
    source = json.loads(manifest_path(bundled_model).read_text())
    assert (manifest["format"], manifest["precision"]) == ("onnx", "int8")
    assert manifest["labels"] == {"runtime": "onnxruntime", "device": "cpu"}
    assert manifest["source_sha256"] == source["file_sha256"]
    assert manifest["calibration"]["frames"] == CALIBRATION and manifest["calibration"]["held_frames"] == HELD
    assert manifest["agreement"]["frames"] == HELD
    assert manifest["agreement"]["reference_boxes"] > HELD  # people on every held frame
    assert manifest["agreement"]["f1"] >= 0.9, manifest["agreement"]
    assert manifest["agreement"]["mean_iou"] >= 0.8, manifest["agreement"]
    assert out.stat().st_size < 0.5 * bundled_model.stat().st_size  # int8 weights


def test_verify_shows_the_agreement(quantized):
    out, _ = quantized
    proc = model_cli("verify", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads(manifest_path(out).read_text())
    assert f"agreement with FP32 source on {HELD} held frames: F1 {manifest['agreement']['f1']:.3f}" in proc.stdout
    assert "labels: device=cpu, runtime=onnxruntime" in proc.stdout
    assert f"calibration: {CALIBRATION} frames, sha256 {manifest['calibration']['frames_sha256']}" in proc.stdout


def test_the_onnxruntime_backend_runs_it_like_the_source(quantized, bundled_model, vtest):
    out, _ = quantized
    frame = read_frames(vtest, [395])[395]  # held back from calibration
    int8 = create_detector({"type": "onnxruntime", "model": out})
    fp32 = create_detector({"type": "onnxruntime", "model": bundled_model})
    found, reference = int8.detect(frame), fp32.detect(frame)
    people = int(int8.names.index("person"))
    assert (found.class_id == people).sum() >= 3
    assert abs(len(found) - len(reference)) <= max(2, len(reference) // 4)


@pytest.mark.parametrize("fmt, backend, suffix, runtime, out", [
    ("openvino-int8", "openvino", ".xml", "openvino", ""),              # a folder: the default name in it
    ("ncnn-int8", "ncnn", ".param", "ncnn", "people-int8.param")])      # a file: that name, its companions too
def test_cpu_runtime_formats_quantize_verify_and_load(fmt, backend, suffix, runtime, out, bundled_model, frames_dir,
                                                      tmp_path, vtest):
    """The same steps for the formats the openvino and ncnn modules build: their files, manifest, agreement."""
    require_module(runtime)
    proc = model_cli("quantize", str(bundled_model), "--calib-dir", str(frames_dir), "--calib-count",
                     str(CALIBRATION), "--format", fmt, "--out", str(tmp_path / out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (artifact,) = tmp_path.glob(f"*{suffix}")
    assert artifact.name == (out or f"{bundled_model.stem}-{fmt}{suffix}")
    manifest = json.loads(manifest_path(artifact).read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(  # nothing else left behind
        [artifact.name, artifact.name + ".manifest.json", *manifest["companions"]])
    assert (manifest["precision"], manifest["labels"]["runtime"]) == ("int8", runtime)
    assert manifest["companions"] and all((tmp_path / name).is_file() for name in manifest["companions"])
    assert manifest["agreement"]["frames"] == HELD and manifest["agreement"]["f1"] >= 0.7, manifest["agreement"]
    verify = model_cli("verify", str(artifact), "--device-check")
    assert verify.returncode == 0, verify.stderr[-3000:]
    assert f"F1 {manifest['agreement']['f1']:.3f}" in verify.stdout
    detector = create_detector({"type": backend, "model": artifact})
    people = detector.names.index("person")
    assert (detector.detect(read_frames(vtest, [395])[395]).class_id == people).sum() >= 3
    weights = next(tmp_path / n for n in manifest["companions"] if n.endswith(".bin"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\1")  # damaged weights fail verify
    damaged = model_cli("verify", str(artifact))
    assert damaged.returncode == 1 and "sha256 does not match" in damaged.stderr


def test_errors_exit_2_naming_the_input(bundled_model, tmp_path):
    (tmp_path / "empty").mkdir()
    proc = model_cli("quantize", str(bundled_model), "--calib-dir", str(tmp_path / "empty"))
    assert proc.returncode == 2 and "has no images" in proc.stderr
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    proc = model_cli("quantize", str(tmp_path / "bad.onnx"), "--calib-dir", str(tmp_path / "empty"))
    assert proc.returncode == 2 and "bad.onnx is not a readable ONNX file" in proc.stderr


@pytest.mark.parametrize("fmt, backend, suffix", [("openvino", "openvino", ".xml"), ("ncnn", "ncnn", ".param")])
def test_fp32_conversions_convert_verify_and_load(fmt, backend, suffix, bundled_model, frames_dir, tmp_path, vtest):
    """`model convert`: an FP32 IR or NCNN model with its manifest, scored on the held frames (as good
    as its source: it is the same network in FP32), verified and run by its backend."""
    require_module(backend)
    proc = model_cli("convert", str(bundled_model), "--format", fmt, "--held-dir", str(frames_dir),
                     "--held-count", str(HELD), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    artifact = tmp_path / f"{bundled_model.stem}-{fmt}{suffix}"
    manifest = json.loads(manifest_path(artifact).read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [artifact.name, artifact.name + ".manifest.json", *manifest["companions"]])
    assert (manifest["precision"], manifest["labels"]["runtime"], manifest["calibration"]) == ("fp32", backend, {})
    assert manifest["agreement"]["frames"] == HELD and manifest["agreement"]["f1"] >= 0.99, manifest["agreement"]
    assert abs(manifest["agreement"]["score_shift"]) < 1e-3
    assert f"F1 {manifest['agreement']['f1']:.3f}" in proc.stdout
    verify = model_cli("verify", str(artifact), "--device-check")
    assert verify.returncode == 0, verify.stderr[-3000:]
    detector = create_detector({"type": backend, "model": artifact})
    assert (detector.detect(read_frames(vtest, [395])[395]).class_id == detector.names.index("person")).sum() >= 3


def test_convert_errors_exit_2_naming_the_input(bundled_model, frames_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    proc = model_cli("convert", str(bundled_model), "--format", "ncnn", "--held-dir", str(tmp_path / "empty"))
    assert proc.returncode == 2 and "has no images" in proc.stderr
    proc = model_cli("convert", str(bundled_model), "--format", "ncnn", "--held-dir", str(frames_dir),
                     "--held-count", "0")
    assert proc.returncode == 2 and "--held-count must be >= 1" in proc.stderr
    proc = model_cli("convert", str(tmp_path), "--format", "ncnn", "--held-dir", str(frames_dir))
    assert proc.returncode == 2 and f"{tmp_path} is a folder, not a file" in proc.stderr
    proc = model_cli("convert", str(bundled_model), "--format", "tflite", "--held-dir", str(frames_dir))
    assert proc.returncode == 2 and "invalid choice: 'tflite'" in proc.stderr
    assert not list(bundled_model.parent.glob(f"{bundled_model.stem}-ncnn*"))  # nothing written beside the source
