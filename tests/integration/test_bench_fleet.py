"""scripts/bench/fleet.py end to end, small: a real controller process, agents in two worker processes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_fleet_bench_commits_every_acked_record_once(tmp_path):
    out = tmp_path / "fleet.json"
    proc = subprocess.run(
        [sys.executable, "scripts/bench/fleet.py", "--agents", "12", "--procs", "2", "--seconds", "2",
         "--warmup", "1", "--fps", "4", "--objects", "3", "--batch", "2", "--workdir", str(tmp_path / "run"),
         "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["agents"]["connected"] == 12 and report["agents"]["failed"] == 0
    integrity = report["integrity"]
    assert (integrity["lost"], integrity["duplicated"], integrity["unexpected"], integrity["sent_but_unacked"]) == (
        0, 0, 0, 0)
    assert integrity["rows"] == report["agents"]["batches"] * 2
    assert integrity["frames_with_wrong_object_count"] == 0
    assert report["committed"]["detections"] > 0 and report["ack_latency_ms"]["p99"] is not None
    assert "lost 0, duplicated 0" in proc.stderr
