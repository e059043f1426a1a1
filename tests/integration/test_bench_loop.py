"""scripts/bench/loop.py end to end, small: the raw detector, real agent and controller processes, the offline agent."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_loop_bench_measures_the_agent_with_and_without_its_controller(vtest, tmp_path):
    out = tmp_path / "loop.json"
    proc = subprocess.run(
        [sys.executable, "scripts/bench/loop.py", "--video", str(vtest), "--frames", "20", "--intervals", "1,3",
         "--rounds", "1", "--skip-ultralytics", "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["raw_detector"]["frames"] == 20
    assert [a["interval"] for a in report["agent"]] == [1, 3]
    assert all(a["frames"] == 20 and a["fps"] > 0 and a["objects"] > 0 for a in report["agent"])
    assert report["agent"][0]["controller_cpu_s"] > 0, "the controller received the detections"
    (offline,) = report["agent_offline_interval_1"]
    assert offline["frames"] == 20 and offline["objects"] > 0 and offline["controller_cpu_s"] == 0
    efficiency = report["efficiency_at_interval_1"]
    for figures in (efficiency, efficiency["offline"]):
        assert figures["vs_predecoded"]["median_of_rounds"] > 0 and figures["vs_read_and_detect"]["best_over_best"] > 0
