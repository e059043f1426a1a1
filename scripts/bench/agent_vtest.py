#!/usr/bin/env python3
"""Raw inference and end-to-end agent speed on vtest.avi, measured in one run.

    python scripts/bench/agent_vtest.py [--frames 795] [--threads N] [--out bench.json]

1. Raw ONNX Runtime inference (session.run only) and the full detect() call
   (letterbox + inference + decode + NMS) at 416, batch 1 (see detector.py).
2. A real controller on 127.0.0.1:0 and a real `edge-agent run` process over the video:
   end-to-end fps (decode, detect, track, durable outbox write, publish, ack), and the
   agent's own p50 of raw inference while it ran.
Writes JSON (stdout, or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from detector import bench_bundled, read_frames  # (scripts/bench/detector.py)
from report import write_report  # (scripts/bench/report.py)


def bench_agent(video: Path, frames: int, threads: int | None, model: Path | None = None,
                extra: tuple[str, ...] = ()) -> dict:
    """One real `edge-agent run` over `video` (fast pace) against a real controller; its summary line,
    and under "controller_plan" the plan the controller holds for the device once the run is over
    (what the agent last reported: the plan's choice, or the runtime controller's change of it).
    `model`: the agent's --model (default: the bundled model on ONNX Runtime); `extra`: more run flags."""
    from tests.conftest import ControllerThread

    with tempfile.TemporaryDirectory() as tmp:
        ctl = ControllerThread(Path(tmp) / "fleet.db")
        try:
            cmd = [sys.executable, "-m", "edgefleet.agent.cli", "--log-level", "warning", "run",
                   "--controller", ctl.address, "--source", str(video), "--state-dir", str(Path(tmp) / "agent"),
                   "--enroll-key", "efk_test", "--max-frames", str(frames), *extra]
            if threads:
                cmd += ["--threads", str(threads)]
            if model is not None:
                cmd += ["--model", str(model)]
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            wall = time.perf_counter() - start
            devices = ctl.controller.store.list_devices()
        finally:
            ctl.stop()
    if proc.returncode != 0:
        raise SystemExit(f"agent failed: {proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    summary["process_wall_s"] = round(wall, 2)
    summary["controller_plan"] = devices[0].plan if len(devices) == 1 else None
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=ROOT / "var" / "samples" / "vtest.avi")
    parser.add_argument("--frames", type=int, default=795)
    parser.add_argument("--detector-frames", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = {
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "video": args.video.name,
        "detector": bench_bundled(416, 1, read_frames(args.video, args.detector_frames), args.threads),
        "agent": bench_agent(args.video, args.frames, args.threads),
    }
    write_report(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
