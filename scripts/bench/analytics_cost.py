#!/usr/bin/env python3
"""The zone and line evaluator's cost per frame now against an earlier revision's, interleaved.

    python scripts/bench/analytics_cost.py --before REV [--objects 10,50,200] [--repeats 5] [--out FILE]

Both evaluators (agent/analytics.py as it is and as it was at git revision REV, loaded from `git show`)
run on the same tracked rows (ByteTrack on seed 0's scene at interval 1, 600 frames, 5 zones + 5
lines), one after the other, `--repeats` times; each frame's time is the minimum over the repeats
(background load hits both alike), averaged over frames. Writes JSON to --out (or stdout) and a
markdown table to stderr.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from report import write_report  # (scripts/bench/report.py)
from scenes import SceneSpec, analytics_layout, int_list, make_scene  # (scripts/bench/scenes.py)

from edgefleet.agent import analytics
from edgefleet.agent.bytetrack import ByteTrack
from edgefleet.agent.zones import StreamAnalytics
from edgefleet.models.base import DEFAULT_CONFIDENCE_THRESHOLD


def load_revision(rev: str):
    """agent/analytics.py at `rev` as a module (its relative imports made absolute)."""
    source = subprocess.run(["git", "show", f"{rev}:agent/analytics.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    source = source.replace("from .", "from edgefleet.agent.").replace("from edgefleet.agent. import",
                                                                       "from edgefleet.agent import")
    path = Path(tempfile.mkdtemp()) / "analytics_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("analytics_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def tracked_rows(objects: int) -> list[tuple[np.ndarray, np.ndarray]]:
    scene = make_scene(SceneSpec(objects=objects, frames=600, seed=0))
    tracker, rows = ByteTrack(), []
    for dets in scene.detections:
        out, _ = tracker.step(dets, DEFAULT_CONFIDENCE_THRESHOLD)
        rows.append((out.xyxy.copy(), out.tracker_id.copy()))
    return rows


def frame_times(module, rows: list) -> np.ndarray:
    layout = StreamAnalytics.model_validate(analytics_layout())
    evaluator = module.StreamEvaluator("scene", layout, totals=None)
    times = []
    for t, (xyxy, ids) in enumerate(rows):
        start = time.perf_counter()
        evaluator.update(t, t / 30, xyxy, ids, ["person"] * len(ids), (1920, 1080))
        times.append(time.perf_counter() - start)
    return np.array(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the git revision to compare with")
    parser.add_argument("--objects", default="10,50,200")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    before = load_revision(args.before)
    result = {"before": args.before, "repeats": args.repeats, "rows": []}
    for n in int_list(args.objects):
        rows = tracked_rows(n)
        best = {"before": np.full(len(rows), np.inf), "now": np.full(len(rows), np.inf)}
        for _ in range(args.repeats):
            for name, module in (("before", before), ("now", analytics)):
                best[name] = np.minimum(best[name], frame_times(module, rows))
        result["rows"].append({"objects": n, **{f"{k}_us": round(float(v.mean() * 1e6), 1) for k, v in best.items()}})
    lines = [f"| objects | before ({args.before}) µs/frame | now µs/frame |", "|---:|---:|---:|"]
    lines += [f"| {r['objects']} | {r['before_us']:.0f} | {r['now_us']:.0f} |" for r in result["rows"]]
    print("\n".join(lines), file=sys.stderr)
    write_report(result, args.out)


if __name__ == "__main__":
    main()
