#!/usr/bin/env python3
"""The runtime controller under load: a real agent with --auto-plan, and busy processes part way in.

    python scripts/bench/adapt.py [--target-fps 60] [--frames 2400] [--load-after 6] [--load-for 8]
                                  [--load-procs 2] [--out FILE]

Starts a controller on 127.0.0.1:0 and `edge-agent run --auto-plan --loop` on vtest.avi; after
--load-after seconds, --load-procs busy-looping processes take the CPU for --load-for seconds.
Reports the plan the agent chose, every controller step with its reason (from the agent's log),
and frames / seconds / fps per rung (from its summary).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from report import write_report  # (scripts/bench/report.py)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=ROOT / "var" / "samples" / "vtest.avi")
    parser.add_argument("--target-fps", type=float, default=60.0)
    parser.add_argument("--frames", type=int, default=2400)
    parser.add_argument("--load-after", type=float, default=6.0, metavar="S")
    parser.add_argument("--load-for", type=float, default=8.0, metavar="S")
    parser.add_argument("--load-procs", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from tests.conftest import ControllerThread

    busy = f"import time\nend = time.time() + {args.load_for}\nwhile time.time() < end: pass"
    with tempfile.TemporaryDirectory() as tmp:
        ctl = ControllerThread(Path(tmp) / "fleet.db")
        try:
            agent = subprocess.Popen(
                [sys.executable, "-m", "edgefleet.agent.cli", "run", "--controller", ctl.address,
                 "--source", str(args.video), "--state-dir", str(Path(tmp) / "agent"), "--enroll-key", "efk_test",
                 "--auto-plan", "--target-fps", str(args.target_fps), "--max-frames", str(args.frames), "--loop"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
            time.sleep(args.load_after)
            load_started = time.strftime("%H:%M:%S")
            hogs = [subprocess.Popen([sys.executable, "-c", busy]) for _ in range(args.load_procs)]
            out, err = agent.communicate(timeout=600)
            for hog in hogs:
                hog.wait()
        finally:
            ctl.stop()
    if agent.returncode != 0:
        raise SystemExit(f"agent failed ({agent.returncode}): {err[-2000:]}")
    summary = json.loads(out.strip().splitlines()[-1])
    log = [line for line in err.splitlines() if any(k in line for k in ("plan:", "controller:", "now detecting"))]
    write_report({"target_fps": args.target_fps, "load": {"started": load_started, "procs": args.load_procs,
                                                          "seconds": args.load_for},
                  "log": log, "controller_events": summary.get("controller_events", []),
                  "rungs": summary.get("rungs", []), "fps": summary["fps"], "frames": summary["frames"],
                  "outbox_left": summary["outbox_left"]}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
