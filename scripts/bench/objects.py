#!/usr/bin/env python3
"""What objects and snapshots cost the agent: the per-frame cost of turning tracks into objects, and the
CPU and bytes of each object's snapshots (and of a CaptureFrame picture) on real frames.

    python scripts/bench/objects.py [--objects 10,50,200] [--frames 300] [--repeats 5] [--out FILE]

- objects: `agent.objects.StreamObjects.update` on `--frames` frames of N boxes walking across a
  768x576 frame (the loop's call, detected rows, scores varying), the minimum over `--repeats` runs
  of each frame's time (background load hits every run alike), averaged over frames.
- snapshots: 30 ended objects on vtest.avi frames (`make samples`), each a person-sized box, encoded at
  the default settings (a crop of <= 320 px, the frame downscaled to 640 px wide with its box and a
  line drawn, JPEG <= 100 kB): wall and CPU time per object on the worker thread, and the JPEG sizes.
- capture: the same frames drawn with 10 boxes and a zone and a line and encoded as CaptureFrame does
  (640 px wide, <= 150 kB): CPU per picture and its size.

Writes JSON to --out (or stdout) and a markdown table to stderr.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from report import write_report  # (scripts/bench/report.py)
from scenes import int_list  # (scripts/bench/scenes.py)

from edgefleet.agent.objects import ObjectSettings, StreamObjects
from edgefleet.agent.snapshots import Snapshots, SnapshotSettings
from edgefleet.agent.zones import StreamAnalytics
from edgefleet.common import annotate
from edgefleet.common.records import TrackedObject

WIDTH, HEIGHT = 768, 576
ANALYTICS = StreamAnalytics.model_validate({
    "lines": {"walkway": {"points": [[0.45, 0.0], [0.45, 1.0]]}},
    "zones": {"square": {"polygon": [[0.55, 0.3], [0.95, 0.3], [0.95, 0.9], [0.55, 0.9]]}}})


def objects_cost(n: int, frames: int, repeats: int) -> float:
    """Microseconds per frame of StreamObjects.update with `n` walking objects."""
    rng = np.random.default_rng(n)
    start = rng.uniform([0, 0], [WIDTH - 60, HEIGHT - 150], (n, 2))
    step = rng.uniform(-3, 3, (n, 2))
    ids, classes, labels = np.arange(1, n + 1), np.zeros(n, int), ["person"] * n
    predicted = np.zeros(n, bool)
    rows = []
    for i in range(frames):
        xy = np.clip(start + i * step, 0, [WIDTH - 60, HEIGHT - 150])
        rows.append((np.concatenate([xy, xy + [60, 150]], axis=1), rng.uniform(0.3, 0.9, n)))
    best = np.full(frames, np.inf)
    for _ in range(repeats):
        objs = StreamObjects("cam0", ObjectSettings(), totals=None, rng=random.Random(0))
        for i, (boxes, scores) in enumerate(rows):
            t0 = time.perf_counter()
            objs.update(1000.0 + i / 10, boxes, ids, classes, labels, scores, predicted)
            best[i] = min(best[i], time.perf_counter() - t0)
    return float(best.mean() * 1e6)


def video_frames(path: Path, count: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < count:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    capture.release()
    if not frames:
        raise SystemExit(f"{path}: no frame (run `make samples`)")
    return frames


def snapshot_cost(frames: list[np.ndarray]) -> dict:
    """Per object: wall and CPU ms of its crop and annotated frame, and their sizes (30 objects: the worker's
    queue holds 32)."""
    snaps = Snapshots(SnapshotSettings(per_minute=1000), {"cam0": ANALYTICS}, totals=None)
    rng = np.random.default_rng(0)
    for i in range(30):
        x, y = rng.uniform(0, WIDTH - 80), rng.uniform(0, HEIGHT - 200)
        obj = TrackedObject(f"o-{i}", "cam0", i + 1, "person", 0, 1000.0, 1001.0, 0.8, (x, y, x + 80, y + 200))
        snaps.best(obj, frames[i % len(frames)])
        snaps.end(obj)
    cpu = time.process_time()
    snaps.start()
    try:
        snaps.drain(120)
        records = snaps.take()
    finally:
        snaps.close()
    cpu = time.process_time() - cpu
    sizes = {kind: [len(r.jpeg) for r in records if r.kind == kind] for kind in ("crop", "frame")}
    return {"objects": snaps.made, "wall_ms_per_object": round(snaps.encode_s / max(snaps.made, 1) * 1000, 2),
            "cpu_ms_per_object": round(cpu / max(snaps.made, 1) * 1000, 2),
            "crop_bytes_mean": int(np.mean(sizes["crop"])), "frame_bytes_mean": int(np.mean(sizes["frame"]))}


def capture_cost(frames: list[np.ndarray]) -> dict:
    """CaptureFrame's picture: 10 boxes, a zone and a line, 640 px wide, <= 150 kB."""
    zones, lines = ANALYTICS.geometry(WIDTH, HEIGHT)
    zone_shapes = [annotate.ZoneShape(z.name, z.polygon, 2) for z in zones]
    line_shapes = [annotate.LineShape(ln.name, ln.points, "in 3 out 1") for ln in lines]
    rng = np.random.default_rng(1)
    sizes, cpu = [], time.process_time()
    for image in frames:
        boxes = []
        for track in range(10):
            x, y = rng.uniform(0, WIDTH - 60), rng.uniform(0, HEIGHT - 150)
            boxes.append(annotate.Box((x, y, x + 60, y + 150), "person", 0.8, track + 1))
        drawn = annotate.render(image, boxes, zone_shapes, line_shapes, max_width=640)
        sizes.append(len(annotate.encode_jpeg(drawn, max_bytes=150_000)))
    cpu = time.process_time() - cpu
    return {"pictures": len(frames), "cpu_ms_per_picture": round(cpu / len(frames) * 1000, 2),
            "bytes_mean": int(np.mean(sizes))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int_list, default=[10, 50, 200])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--video", type=Path, default=ROOT / "var" / "samples" / "vtest.avi")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    frames = video_frames(args.video, 40)
    result = {
        "command": " ".join(["python", "scripts/bench/objects.py", *sys.argv[1:]]),
        "objects_us_per_frame": {str(n): round(objects_cost(n, args.frames, args.repeats), 1) for n in args.objects},
        "snapshots": snapshot_cost(frames),
        "capture": capture_cost(frames),
    }
    print("| objects | us per frame |\n|---:|---:|", file=sys.stderr)
    for n, us in result["objects_us_per_frame"].items():
        print(f"| {n} | {us} |", file=sys.stderr)
    print(f"snapshots: {result['snapshots']}\ncapture: {result['capture']}", file=sys.stderr)
    write_report(result, args.out)


if __name__ == "__main__":
    main()
