"""Calibrating the real bundled detector on a few real frames (slow: loads ONNX Runtime twice)."""
from __future__ import annotations

import json

import cv2
import pytest

from edgefleet.adaptive.artifacts import discover_artifacts
from edgefleet.adaptive.plan import PlanOptions, format_plan_report, plan
from edgefleet.adaptive.probe import probe

pytestmark = pytest.mark.slow


def read_frames(path, count):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert len(frames) == count, f"{path} has fewer than {count} frames"
    return frames


def test_calibrates_the_bundled_detector_on_three_frames_at_two_sizes(vtest, tmp_path):
    from edgefleet.models import load_detector
    from edgefleet.models.bundled import default_model

    profile = probe()
    artifacts, rejected = discover_artifacts([default_model()], profile)
    assert len(artifacts) == 1, rejected
    loads = []

    def one_thread(artifact, size, batch):  # the test machine is shared: keep to one core
        loads.append(size)
        return load_detector(artifact.path, input_size=size, intra_op_threads=1)

    frames = read_frames(vtest, 3)
    options = PlanOptions(target_fps=2, input_sides=(256, 320))   # a loose budget: both sizes get measured
    cache = tmp_path / "calibration.json"
    report = plan(profile, artifacts, frames, options, detector_factory=one_thread, cache_path=cache)
    assert loads == [(256, 256), (320, 320)]
    assert [(c.input_width, c.status) for c in report.candidates] == [(256, "measured"), (320, "measured")]
    assert all(c.p50_ms > 0 and c.p95_ms >= c.p50_ms for c in report.candidates)
    assert report.plan.source == "calibration" and report.plan.input_width in (256, 320)
    assert report.plan.artifact_sha256 == artifacts[0].sha256
    assert len(json.loads(cache.read_text())["entries"]) == 2
    assert "yolov3-tiny-coco" in format_plan_report(report)

    loads.clear()
    again = plan(profile, artifacts, frames, options, detector_factory=one_thread, cache_path=cache)
    assert loads == [] and {c.status for c in again.candidates} == {"cached"}
    assert again.plan.to_dict() == report.plan.to_dict()
