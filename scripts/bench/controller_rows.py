#!/usr/bin/env python3
"""The controller's rows per day at a fleet's size, before (every frame a row) and after (`--store-frames none`:
objects, count rows and snapshot rows only), measured from a real agent against a real controller.

    python scripts/bench/controller_rows.py [--seconds 60] [--source var/samples/vtest.avi] [--agents 1000]
                                            [--store-frames all] [--workdir DIR]
                                            [--out docs/bench/controller-rows.json]

1. A real controller (`edgefleet serve`, a fresh SQLite file, `--store-frames` as given: `all` by default so
   that one run shows both the frame rows and the others).
2. A real agent (`edge-agent run`, the bundled model) on the sample video at `--pace realtime` (a camera's
   pace: the video's own frame rate), looped, with a counting line across the frame and a zone on its
   left half (the same configuration as tests/integration/test_zones_agent.py), for `--seconds`; then it is
   stopped with SIGTERM (it ends its objects and sends what its outbox holds) and the controller with it.
3. The rows of each table are counted and scaled to a day and `--agents` agents: rows / seconds of capture
   time covered (first to last frame stored; with no frames, first to last object seen) x 86,400 x agents;
   frame rows also at the video's frame rate (what an agent that keeps up stores; a loaded machine's agent
   detects on fewer frames). "before" is what the controller stored before objects existed (a row per
   frame); "after" is `--store-frames none`: the rows of objects, object_counts, object_snapshots and
   snapshots (the JPEGs, stored once each; their bytes too).

Writes JSON (stdout, or --out) and prints a table.
"""
from __future__ import annotations

import argparse
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(Path(__file__).resolve().parent)]

from controller import ENV, start_controller  # (scripts/bench/controller.py)
from report import write_report  # (scripts/bench/report.py)

DAY_S = 86_400
AGENT_CONFIG = """\
analytics:
  cam0:
    lines: {middle: {points: [[0.0, 0.6], [1.0, 0.6]], labels: [person]}}
    zones: {left: {polygon: [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]}}
"""
TABLES = ("detections", "objects", "object_counts", "object_snapshots", "snapshots")
AFTER = ("objects", "object_counts", "object_snapshots", "snapshots")


def run_agent(workdir: Path, address: str, source: Path, seconds: float) -> dict:
    """The agent on `source` for `seconds`, then SIGTERM; its exit code and how long it ran."""
    config = workdir / "agent.yaml"
    config.write_text(AGENT_CONFIG)
    log = (workdir / "agent.log").open("w")
    started = time.monotonic()
    agent = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.agent.cli", "run", "--config", str(config), "--controller", address,
         "--source", str(source), "--pace", "realtime", "--loop", "--stream-id", "cam0",
         "--state-dir", str(workdir / "agent"), "--enroll-key", "efk_rows", "--name", "rows-cam", "--threads", "1"],
        stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT, env=ENV)
    try:
        while time.monotonic() - started < seconds:
            if agent.poll() is not None:
                raise SystemExit(f"the agent exited with {agent.returncode}: see {workdir / 'agent.log'}")
            time.sleep(1)
    finally:
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=120)
    return {"exit_code": code, "ran_s": round(time.monotonic() - started, 1)}


def count_rows(db: Path) -> dict:
    conn = sqlite3.connect(str(db))
    try:
        rows = {table: conn.execute(f"select count(*) from {table}").fetchone()[0] for table in TABLES}
        first, last, frames = conn.execute("select min(capture_time), max(capture_time), count(*) from detections"
                                           ).fetchone()
        if not frames:  # --store-frames none: the time the objects cover
            first, last = conn.execute("select min(first_seen), max(last_seen) from objects").fetchone()
        jpeg_bytes = conn.execute("select coalesce(sum(size), 0) from snapshots").fetchone()[0]
        acked = conn.execute("select coalesce(sum(acked_sequence), 0) from devices").fetchone()[0]
        counted = conn.execute("select coalesce(sum(count), 0) from object_counts").fetchone()[0]
    finally:
        conn.close()
    return {"rows": rows, "first_capture": first, "last_capture": last, "frames": frames, "jpeg_bytes": jpeg_bytes,
            "records_acked": acked, "events_counted": counted}


def video_fps(source: Path) -> float:
    import cv2

    capture = cv2.VideoCapture(str(source))
    try:
        return float(capture.get(cv2.CAP_PROP_FPS)) or 25.0
    finally:
        capture.release()


def per_day(measured: dict, agents: int, source_fps: float) -> dict:
    """Rows per day at `agents` agents, from the rows over the capture time the run covered. `before` also at
    the video's own frame rate (a camera whose every frame the agent keeps up with): an agent slower than
    that (a loaded machine) stores fewer frame rows, while the objects follow the scene, which plays at its
    own pace whatever the agent's rate (realtime pace keeps only the newest frame)."""
    span = (measured["last_capture"] or 0) - (measured["first_capture"] or 0)
    if measured["first_capture"] is None or span <= 0:
        raise SystemExit("nothing stored: nothing to scale (see the agent's log)")
    scale = DAY_S / span * agents
    rows = {table: round(n * scale) for table, n in measured["rows"].items()}
    return {"capture_span_s": round(span, 1), "agent_fps": round(measured["frames"] / span, 2),
            "rows_per_day": rows, "before": rows["detections"], "after": sum(rows[t] for t in AFTER),
            "source_fps": source_fps, "before_at_source_fps": round(source_fps * DAY_S * agents),
            "jpeg_bytes_per_day": round(measured["jpeg_bytes"] * scale)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the agent runs")
    parser.add_argument("--source", type=Path, default=ROOT / "var" / "samples" / "vtest.avi")
    parser.add_argument("--agents", type=int, default=1000, help="the fleet size the rows are scaled to")
    parser.add_argument("--store-frames", default="all", help="the controller's --store-frames")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not args.source.exists():
        raise SystemExit(f"{args.source} is missing: run `make samples`")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="controller-rows-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "fleet.db"
    ctl = start_controller(workdir, "--enroll-key", "efk_rows", "--store-frames", args.store_frames,
                           log_level="warning")
    try:
        agent = run_agent(workdir, ctl.address, args.source, args.seconds)
        time.sleep(2)  # the last acks
    finally:
        ctl.proc.send_signal(signal.SIGTERM)
        ctl.proc.wait(timeout=60)
    measured = count_rows(db)
    scaled = per_day(measured, args.agents, video_fps(args.source))
    result = {
        "command": " ".join(["python", "scripts/bench/controller_rows.py", *sys.argv[1:]]),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "source": args.source.name, "seconds": args.seconds, "agents": args.agents,
        "store_frames": args.store_frames, "agent": agent, "measured": measured, "scaled": scaled,
    }
    print(f"{'table':<18} {'rows in run':>12} {'rows/day at ' + str(args.agents) + ' agents':>26}")
    for table in TABLES:
        print(f"{table:<18} {measured['rows'][table]:>12,} {scaled['rows_per_day'][table]:>26,}")
    print(f"before (a row per frame): {scaled['before']:,} rows/day; after (--store-frames none): "
          f"{scaled['after']:,} rows/day ({scaled['jpeg_bytes_per_day'] / 1e9:.1f} GB of JPEGs/day); "
          f"agent at {scaled['agent_fps']} fps over {scaled['capture_span_s']} s; before at the video's "
          f"{scaled['source_fps']:g} fps: {scaled['before_at_source_fps']:,} rows/day")
    write_report(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
