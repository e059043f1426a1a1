"""`edge-agent plan` and `edge-agent run --auto-plan`, as a user runs them."""
from __future__ import annotations

import json
import shutil

import cv2
import pytest

from edgefleet.models.manifest import manifest_path

from ..conftest import read_frames, require_module, run_cli


def plan_cli(*args: str, timeout: float = 120):
    return run_cli("edgefleet.agent.cli", "plan", *args, timeout=timeout)


@pytest.mark.data  # `plan` reads the bundled model
def test_plan_without_calibration_uses_the_static_table(tmp_path):
    proc = plan_cli("--no-calibrate", "--state-dir", str(tmp_path), "--models-dir", str(tmp_path / "none"))
    assert proc.returncode == 0, proc.stderr
    assert "plan       yolov3-tiny-coco" in proc.stdout
    assert "static rule" in proc.stdout and "calibration disabled" in proc.stdout
    assert "ladder     " in proc.stdout

    proc = plan_cli("--no-calibrate", "--json", "--target-fps", "30", "--streams", "2",
                    "--state-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["plan"]["source"] == "static" and report["plan"]["batch"] == 2
    assert report["options"]["target_fps"] == 30
    assert report["ladder"][0]["model_path"] == report["plan"]["model_path"]


def test_a_plan_that_cannot_be_made_is_a_clear_error(tmp_path):
    proc = plan_cli("--no-calibrate", "--target-fps", "0", "--state-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "--target-fps must be > 0, got 0" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_plan_calibrates_on_frames_of_the_source_and_caches_the_timings(tmp_path, vtest):
    args = ("--json", "--source", str(vtest), "--frames", "3", "--target-fps", "10", "--state-dir", str(tmp_path))
    proc = plan_cli(*args)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["plan"]["source"] == "calibration"
    measured = [c for c in report["candidates"] if c["status"] == "measured"]
    assert measured and all(c["p95_ms"] > 0 for c in measured)
    assert (tmp_path / "calibration.json").is_file()

    again = json.loads(plan_cli(*args).stdout)
    assert {c["status"] for c in again["candidates"]} <= {"cached", "skipped"}
    assert again["plan"]["input_width"] == report["plan"]["input_width"]


@pytest.mark.slow
def test_auto_plan_steps_down_when_the_target_is_out_of_reach(controller, control, vtest, tmp_path):
    """At 1,000 fps nothing fits on any CPU: the plan takes the cheapest candidate, and once the
    controller's settling time and persistence have passed (about 8 s) it steps down its ladder
    (smaller input). The looped video keeps the run longer than that however fast the machine."""
    proc = run_cli("edgefleet.agent.cli", "run", "--controller", controller.address, "--source", str(vtest),
                   "--state-dir", str(tmp_path / "agent"), "--enroll-key", "efk_test", "--max-frames", "2400",
                   "--loop", "--auto-plan", "--target-fps", "1000", timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["frames"] == 2400 and summary["outbox_left"] == 0
    assert "controller: step down" in proc.stderr
    downs = [e for e in summary["controller_events"] if e["direction"] == "down"]
    assert downs and all(set(e["changes"]) & {"detect_interval", "input_size", "model"} for e in downs)
    assert summary["rungs"][0]["rung"] != summary["rung"], "the run ended on another rung than it started"
    assert sum(r["frames"] for r in summary["rungs"]) == summary["frames"]  # frames, not outbox records
    assert "now detecting with" in proc.stderr or all(e["changes"] == ["detect_interval"] for e in downs)

    from edgefleet.v1 import fleet_pb2

    (device,) = control.ListDevices(fleet_pb2.ListDevicesRequest(), timeout=10).devices
    assert device.plan.detect_interval >= 1 and device.plan.input_width > 0
    assert (device.plan.backend, device.plan.precision) == ("onnxruntime", "fp32")  # the bundled model's
    assert len(device.plan.artifact_sha256) == 64, device.plan  # its file's, as the plan chose it
    # the hello said why the plan started where it did; the heartbeats reported every step since
    assert device.plan.reason.startswith("runtime controller, step down"), device.plan.reason


@pytest.mark.slow
@pytest.mark.cpu_extra
def test_plan_weighs_the_cpu_artifacts_the_model_clis_made(tmp_path, vtest, bundled_model):
    """`edge-agent plan --models-dir` over what `edgefleet model quantize` and `convert` left there:
    every one is timed with the agreement its manifest carries, one whose agreement is under
    --min-agreement is refused unmeasured, and the pick is the fastest of the largest input that fits."""
    require_module("openvino")
    require_module("ncnn")
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in read_frames(vtest, list(range(0, 200, 10))).items():
        cv2.imwrite(str(frames / f"f{i:04d}.jpg"), frame)
    models = tmp_path / "models"
    models.mkdir()
    model = models / bundled_model.name
    shutil.copy(bundled_model, model)
    shutil.copy(manifest_path(bundled_model), manifest_path(model))
    for command, *args in (("quantize", "--calib-dir", str(frames), "--format", "openvino-int8"),
                           ("convert", "--held-dir", str(frames), "--format", "ncnn")):
        made = run_cli("edgefleet.fleet.cli", "model", command, str(model), *args, timeout=300)
        assert made.returncode == 0, made.stderr[-3000:]
    ncnn_manifest = manifest_path(models / f"{model.stem}-ncnn.param")
    data = json.loads(ncnn_manifest.read_text())
    data["agreement"]["f1"] = 0.5  # as if the conversion had gone wrong
    ncnn_manifest.write_text(json.dumps(data))  # the manifest's own file hashes still match

    proc = plan_cli("--json", "--source", str(vtest), "--frames", "3", "--models-dir", str(models),
                    "--state-dir", str(tmp_path / "state"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    by_backend = {}
    for c in report["candidates"]:
        by_backend.setdefault((c["backend"], c["precision"]), []).append(c)
    assert set(by_backend) >= {("onnxruntime", "fp32"), ("openvino", "int8"), ("ncnn", "fp32")}, by_backend.keys()
    assert all(c["status"] == "rejected" and "agreement 0.500 below 0.95" in c["note"]
               for c in by_backend["ncnn", "fp32"])
    openvino = json.loads(manifest_path(models / f"{model.stem}-openvino-int8.xml").read_text())
    assert all(c["agreement"] == pytest.approx(openvino["agreement"]["f1"]) for c in by_backend["openvino", "int8"])
    plan = report["plan"]
    fits = [c for c in report["candidates"] if c["status"] in ("measured", "cached") and c["fits_interval"] == 1
            and (c["input_width"], c["input_height"]) == (plan["input_width"], plan["input_height"])]
    assert min(fits, key=lambda c: c["p95_ms"])["model_path"] == plan["model_path"]
    assert max(c["input_width"] for c in report["candidates"] if c["fits_interval"] == 1) == plan["input_width"]
