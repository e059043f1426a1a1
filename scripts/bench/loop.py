#!/usr/bin/env python3
"""Agent loop efficiency: tracked fps of the real agent vs raw detector fps, same video.

    python scripts/bench/loop.py [--video var/samples/vtest.avi] [--frames 795] [--intervals 1,2,3,4,5,6]
                                 [--rounds 3] [--threads N] [--out FILE]

1. Raw detector fps: `detect()` on frames decoded beforehand (no decoding, no tracking, no I/O),
   the bundled detector with ONNX Runtime's default settings.
2. For each detect interval: a real controller on 127.0.0.1:0 and a real `edge-agent run`
   process over the video (decode on the reader thread, detect or predict, track, fsync'd
   outbox, publish, ack); its end-to-end fps over the frames it processed.
Efficiency = agent fps at interval 1 / raw detector fps.

Every measurement runs `--rounds` times, the raw detector and the agent runs alternating, and
the best run of each counts (all runs are in the JSON): on a shared machine, background load
only ever slows a run down, and alternating spreads it over both sides.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from report import write_report  # noqa: E402  (scripts/bench/report.py)
from detector import read_frames  # noqa: E402  (scripts/bench/detector.py)


def raw_detector_fps(detector, images: list[np.ndarray]) -> float:
    start = time.perf_counter()
    for image in images:
        detector.detect(image)
    return len(images) / (time.perf_counter() - start)


def agent_run(video: Path, frames: int, interval: int, threads: int | None) -> dict:
    from tests.conftest import ControllerThread

    with tempfile.TemporaryDirectory() as tmp:
        ctl = ControllerThread(Path(tmp) / "fleet.db")
        try:
            cmd = [sys.executable, "-m", "agent.cli", "--log-level", "warning", "run", "--controller", ctl.address,
                   "--source", str(video), "--state-dir", str(Path(tmp) / "agent"), "--enroll-key", "efk_test",
                   "--max-frames", str(frames), "--detect-interval", str(interval)]
            if threads:
                cmd += ["--threads", str(threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        finally:
            ctl.stop()
    if proc.returncode != 0:
        raise SystemExit(f"agent failed at interval {interval}: {proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"frames": summary["frames"], "fps": summary["fps"], "inference_ms_p50": summary["inference_ms_p50"],
            "objects": summary["detections"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=ROOT / "var" / "samples" / "vtest.avi")
    parser.add_argument("--frames", type=int, default=795)
    parser.add_argument("--intervals", default="1,2,3,4,5,6")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each measurement (the best counts)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from models import load_default_detector

    detector = load_default_detector(intra_op_threads=args.threads)
    images = read_frames(args.video, min(args.frames, 200))
    intervals = [int(i) for i in args.intervals.split(",")]
    raw, runs = [], {k: [] for k in intervals}
    for _ in range(args.rounds):
        raw.append(round(raw_detector_fps(detector, images), 2))
        for k in intervals:
            runs[k].append(agent_run(args.video, args.frames, k, args.threads))
    agent = [{"interval": k, **max(runs[k], key=lambda r: r["fps"]), "fps_runs": [r["fps"] for r in runs[k]]}
             for k in intervals]
    first = next((a for a in agent if a["interval"] == 1), None)
    result = {
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "video": args.video.name, "rounds": args.rounds,
        "raw_detector": {"frames": len(images), "fps": max(raw), "fps_runs": raw},
        "agent": agent,
        "efficiency_at_interval_1": round(first["fps"] / max(raw), 3) if first else None,
    }
    write_report(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
