"""scripts/bench/detector.py --backends end to end, small: every backend x precision cell built, timed and scored."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.cpu_extra]


def test_backend_matrix_writes_every_cell(vtest, tmp_path):
    out = tmp_path / "detector-cpu.json"
    proc = subprocess.run(
        [sys.executable, "scripts/bench/detector.py", "--video", str(vtest), "--backends", "onnxruntime,openvino,ncnn",
         "--precisions", "fp32,int8", "--sizes", "320", "--frames", "3", "--calib-frames", "2", "--held-frames", "2",
         "--rounds", "1", "--block", "2", "--threads", "1", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["results"]
    cells = {(r["backend"], r["precision"], r["input_size"]) for r in rows}
    assert cells == {(b, p, 320) for b in ("onnxruntime", "openvino", "ncnn") for p in ("fp32", "int8")}
    assert len(rows) == 6 and report["frames"] == {"timed": [0, 3], "calibration": [3, 5], "held": [5, 7]}
    for row in rows:
        assert row["calls"] == 2 and row["fps"] > 0 and row["p95_ms"] >= row["p50_ms"] > 0, row
        assert 0.0 <= row["agreement"]["f1"] <= 1.0 and row["agreement"]["frames"] == 2.0, row
    reference = rows[0]
    assert (reference["backend"], reference["precision"]) == ("onnxruntime", "fp32")
    assert reference["agreement"]["f1"] == 1.0 and reference["speed_vs_reference"] == 1.0
    assert reference["agreement"]["reference_boxes"] > 0, "held frames of vtest.avi have people in them"
    int8 = {r["backend"]: r["model"] for r in rows if r["precision"] == "int8"}
    assert int8["openvino"].endswith("-int8.xml") and int8["ncnn"].endswith(".ncnn-int8.param"), int8


def test_unknown_backend_exits_non_zero(vtest, tmp_path):
    proc = subprocess.run(
        [sys.executable, "scripts/bench/detector.py", "--video", str(vtest), "--backends", "onnxruntime,tflite",
         "--out", str(tmp_path / "x.json")],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )
    assert proc.returncode != 0 and "tflite" in proc.stderr
    assert not (tmp_path / "x.json").exists()
