"""scripts/bench/fleet.py end to end, small: real controller processes, agents in two worker processes."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def run_bench(tmp_path, *extra: str, agents: int = 12) -> tuple[subprocess.CompletedProcess, dict | None]:
    out = tmp_path / "fleet.json"
    out.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, "scripts/bench/fleet.py", "--agents", str(agents), "--procs", "2", "--seconds", "2",
         "--warmup", "1", "--fps", "4", "--objects", "3", "--batch", "2", "--workdir", str(tmp_path / "run"),
         "--out", str(out), *extra],
        capture_output=True, text=True, timeout=240, cwd=ROOT, check=False,
    )
    return proc, json.loads(out.read_text()) if out.exists() else None


def assert_exact(proc: subprocess.CompletedProcess, report: dict, agents: int) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert report["agents"]["connected"] == agents and report["agents"]["failed"] == 0
    integrity = report["integrity"]
    assert (integrity["lost"], integrity["duplicated"], integrity["unexpected"], integrity["sent_but_unacked"]) == (
        0, 0, 0, 0)
    assert integrity["rows"] == report["agents"]["batches"] * 2
    assert integrity["frames_with_wrong_object_count"] == 0
    assert integrity["device_counter_mismatches"] == 0
    assert report["committed"]["detections"] > 0 and report["ack_latency_ms"]["p99"] is not None
    assert "lost 0, duplicated 0" in proc.stderr


@pytest.mark.slow
def test_fleet_bench_commits_every_acked_record_once(tmp_path):
    proc, report = run_bench(tmp_path)
    assert_exact(proc, report, 12)
    database = report["database"]
    assert database["backend"] == "sqlite" and database["server_cpu_s_per_million_detections"] is None


@pytest.mark.slow
def test_fleet_bench_on_postgresql_with_two_replicas(pg_url, tmp_path):
    proc, report = run_bench(tmp_path, "--db", pg_url, "--replicas", "2", agents=6)
    assert_exact(proc, report, 6)
    replicas = report["controller"]["replicas"]
    frames = [int(re.search(r"(\d+) frames", r["ingest"]).group(1)) for r in replicas]
    assert len(frames) == 2 and min(frames) > 0  # agents spread over both replicas, each committing
    assert sum(frames) == report["integrity"]["rows"]
    database = report["database"]
    assert database["backend"] == "postgresql" and database["detections_bytes_end"] > 0
    # the server runs here, so its processes are found (None otherwise); two seconds of 24 frames/s can
    # fall between the kernel's CPU ticks, so zero is a possible reading at this size
    assert database["server_cpu_s_per_million_detections"] is not None
    assert database["server_cpu_s_per_million_detections"] >= 0

    again, _ = run_bench(tmp_path, "--db", pg_url, agents=2)  # the exactness check needs an empty database
    assert again.returncode != 0 and "already holds" in again.stderr
