#!/usr/bin/env python3
"""The demo's zone and line on real video, with and without the hand-off of a lost track to a new id.

    python scripts/bench/zones_vtest.py [--video var/samples/vtest.avi] [--out FILE]

The bundled detector runs once over every frame of the video (people only); ByteTrack and the
evaluator (agent.analytics) then replay those detections twice, with `handoff` on (the agent's
default: a new track that appears where a lost one was heading takes over its sides of the lines
and its zones) and off. Reported per run: zone entries and exits, line crossings by direction,
and the track ids the tracker made. There is no ground truth here (scripts/bench/analytics.py
scores against exact truth on synthetic scenes); what this shows is how many entries each way
counts on the video `make demo` plays, with the layout it uses (fleet.demo.ANALYTICS).
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from detector import default_video  # (scripts/bench/detector.py)
from report import write_report  # (scripts/bench/report.py)

from edgefleet.agent.analytics import LineCrossing, StreamEvaluator, ZoneEvent
from edgefleet.agent.bytetrack import ByteTrack
from edgefleet.agent.zones import StreamAnalytics
from edgefleet.fleet.demo import ANALYTICS
from edgefleet.models import load_default_detector
from edgefleet.models.base import DEFAULT_CONFIDENCE_THRESHOLD


def detect_all(video: Path) -> tuple[list, tuple[int, int], float]:
    """The people the bundled detector finds on every frame; the frame size; the video's fps."""
    detector = load_default_detector()
    person = detector.names.index("person")
    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    found, size = [], (0, 0)
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        size = (frame.shape[1], frame.shape[0])
        detections = detector.detect(frame)
        found.append(detections[detections.class_id == person])
    return found, size, fps


def replay(detections: list, size: tuple[int, int], fps: float, handoff: bool) -> dict:
    layout = StreamAnalytics.model_validate(ANALYTICS["vtest.avi"]["cam0"])
    tracker, evaluator = ByteTrack(), StreamEvaluator("cam0", layout, totals=None, handoff=handoff)
    counts: Counter = Counter()
    ids: set[int] = set()
    for t, frame in enumerate(detections):
        rows, _ = tracker.step(frame, DEFAULT_CONFIDENCE_THRESHOLD)
        ids.update(rows.tracker_id.tolist())
        for e in evaluator.update(t, t / fps, rows.xyxy, rows.tracker_id, ["person"] * len(rows), size):
            if isinstance(e, ZoneEvent):
                counts[f"{e.zone} {e.kind}"] += 1
            elif isinstance(e, LineCrossing):
                counts[f"{e.line} {e.direction}"] += 1
    return {"handoff": handoff, **dict(sorted(counts.items())), "track_ids": len(ids)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=default_video())
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    detections, size, fps = detect_all(args.video)
    runs = [replay(detections, size, fps, handoff) for handoff in (False, True)]
    write_report({"video": args.video.name, "frames": len(detections), "layout": ANALYTICS["vtest.avi"]["cam0"],
                  "runs": runs}, args.out)


if __name__ == "__main__":
    main()
