#!/usr/bin/env python3
"""Zone and line accuracy and cost on synthetic scenes with exact ground truth (agent.analytics).

    python scripts/bench/analytics.py [--objects 10,50,200] [--frames 600] [--seeds 0,1] [--crowd-seeds 0]
                                      [--intervals 1,2,3,4] [--fps 30] [--detector-calls 10] [--margin M]
                                      [--attribution track|frame] [--handoff on|off] [--line-memory 300]
                                      [--explain] [--out FILE]

Each scene (scripts/bench/scenes.py) has the five lines and five zones of `scenes.analytics_layout`;
its true crossings and visits come from the ground truth's exact boxes (`scenes.true_events`). The
agent's path is replayed on the scene's detections: ByteTrack with detections on every k-th frame
and predictions between, the rows the agent would publish (score >= the publish threshold), then
the evaluator as the loop runs it (default margin, lost-track frames, line memory and hand-off;
`--handoff off --line-memory 30` is the evaluator before agent.handoff).

Accuracy per (objects, interval), over the seeds:
- `line_accuracy`: counted crossings matched to a true crossing of the same object, line segment
  and direction within `MATCH_FRAMES` frames of the object in view (one to one) / true crossings. A
  counted crossing's object is the one its track's box followed on most frames within
  `ATTRIBUTION_FRAMES` of it (IoU >= 0.3; `--attribution frame`: the box's on that frame alone);
- `double_counts`: counted crossings left over with the same object, segment and direction as a
  true one (counted twice) / true crossings; `spurious`: the other left-over counts (another
  direction, or no true crossing there) / true crossings;
- zone dwell: per true visit (enter to exit), the dwell of the counted visits of the same object
  and zone that overlap it, summed; `dwell_abs_error_s` the mean absolute difference over true
  visits that have one, `dwell_matched` the share of true visits that have one;
  `zone_entries_ratio`: enter events counted / true enter events (1.0 right; above it, one visit
  entered again under a new track id).
Cost per frame (interval 1, 5 zones + 5 lines): the evaluator's update (`analytics_us`), the tracker
step (`track_us`) and the bundled detector's call on a frame of the scene's size (`detect_ms`, the
median of `--detector-calls`), measured in the same run; `share_i1` = analytics / (detect + track +
analytics), the loop's frame time at interval 1; `share_i3` with the detector's time divided by 3.
`--explain` classifies every missed crossing and every count not right (scripts/bench/analytics_explain.py),
in the JSON rows (`missed`, `not_right`) and a table.
Writes JSON to --out (or stdout) and markdown tables to stderr.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from analytics_explain import COUNT_CLASSES, MISS_CLASSES, explain_count, explain_miss, near_segment_end, tally
from report import write_report  # (scripts/bench/report.py)
from scenes import Scene, SceneSpec, analytics_layout, int_list, make_scene, true_events  # (scripts/bench/scenes.py)

from edgefleet.agent.analytics import LINE_MEMORY_FRAMES, LineCrossing, StreamEvaluator, ZoneEvent
from edgefleet.agent.bytetrack import ByteTrack
from edgefleet.agent.zones import DEFAULT_MARGIN, StreamAnalytics
from edgefleet.models.base import DEFAULT_CONFIDENCE_THRESHOLD

MATCH_FRAMES = 90
"""A counted crossing matches a true one of the same object, segment and direction at most this many frames
apart, counting only the frames on which the object is in view: an object that crosses and then walks
behind a pillar can be counted only once it is seen again."""


def replay(scene: Scene, interval: int, fps: float, margin: float | None = None, handoff: bool = True,
           line_memory: int = LINE_MEMORY_FRAMES) -> tuple[list, list[tuple[np.ndarray, np.ndarray]], dict]:
    """The agent's events on `scene` at detect interval `interval`; its tracked rows per frame; the
    per-frame seconds of the tracker and of the evaluator."""
    tracker = ByteTrack()
    layout = StreamAnalytics.model_validate(analytics_layout(margin=margin))
    evaluator = StreamEvaluator("scene", layout, totals=None, handoff=handoff, line_memory=line_memory)
    size = (scene.spec.width, scene.spec.height)
    events, rows, track_s, analytics_s = [], [], [], []
    clock = time.perf_counter
    for t, dets in enumerate(scene.detections):
        start = clock()
        out, _ = tracker.step(dets if t % interval == 0 else None, DEFAULT_CONFIDENCE_THRESHOLD)
        tracked = clock()
        events += evaluator.update(t, t / fps, out.xyxy, out.tracker_id, ["person"] * len(out), size)
        done = clock()
        track_s.append(tracked - start)
        analytics_s.append(done - tracked)
        rows.append((out.tracker_id, out.xyxy))
    return events, rows, {"track_s": track_s, "analytics_s": analytics_s}


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area - inter, 1e-9)


ATTRIBUTION_FRAMES = 15
"""A count's object: the one its track's box followed most over this many frames either side of it."""


def identities(scene: Scene, rows: list) -> list[dict[int, int | None]]:
    """Per frame: each published track's ground-truth object, the one its box overlaps most (IoU >= 0.3), or None."""
    out = []
    for (ids, xyxy), gt_ids, gt_xyxy in zip(rows, scene.gt_ids, scene.gt_xyxy):
        frame: dict[int, int | None] = {}
        for tid, box in zip(ids.tolist(), xyxy):
            iou = _iou(box, gt_xyxy.astype(float)) if len(gt_ids) else np.zeros(1)
            frame[tid] = int(gt_ids[int(np.argmax(iou))]) if iou.max() >= 0.3 else None
        out.append(frame)
    return out


def track_object(ident: list[dict], frame: int, track_id: int, attribution: str = "track",
                 frames: range | None = None) -> int | None:
    """The object a count of `track_id` on `frame` belongs to. `frame` attribution: the box's object on
    that frame alone (None when it overlaps none: the object hidden behind a pillar while its box is
    predicted, or another object's box in front of it). `track` attribution: the object the track's box
    followed on most of its frames within ATTRIBUTION_FRAMES of `frame` (ties: the nearest frame's)."""
    if attribution == "frame":
        return ident[frame].get(track_id)
    if frames is None:
        frames = range(max(0, frame - ATTRIBUTION_FRAMES), min(len(ident), frame + ATTRIBUTION_FRAMES + 1))
    near = sorted((abs(g - frame), ident[g][track_id]) for g in frames
                  if ident[g].get(track_id) is not None)
    if not near:
        return None
    votes = Counter(obj for _, obj in near)
    best = max(votes.values())
    return next(obj for _, obj in near if votes[obj] == best)


def score_lines(scene: Scene, truth: list, events: list, rows: list, attribution: str = "track",
                explain: dict | None = None) -> dict:
    """Counted crossings against true ones (see the module's docstring); with `explain` (segment
    geometry and margin), the class of every miss and every count not right (analytics_explain)."""
    every = [e for e in truth if isinstance(e, LineCrossing)]
    true = [e for e in every if _seen(scene, e)]
    ident = identities(scene, rows)
    apart = _apart(scene)
    open_ = {i: e for i, e in enumerate(every)}
    matched = matched_seen = doubles = spurious = 0
    counted, wrong = [], []
    for e in (e for e in events if isinstance(e, LineCrossing)):
        obj = track_object(ident, e.frame_index, e.track_id, attribution)
        key = (obj, e.line, e.segment, e.direction)
        hit = next((i for i, t in open_.items() if (t.track_id, t.line, t.segment, t.direction) == key
                    and apart(t.track_id, t.frame_index, e.frame_index) <= MATCH_FRAMES), None)
        if hit is not None:
            matched += 1
            matched_seen += _seen(scene, open_.pop(hit))
            counted.append(e)
            continue
        if any((t.track_id, t.line, t.segment, t.direction) == key for t in every):
            doubles += 1
        else:
            spurious += 1
        if explain is not None:
            f = e.frame_index
            sides = (track_object(ident, f, e.track_id, frames=range(max(0, f - ATTRIBUTION_FRAMES), f)),
                     track_object(ident, f, e.track_id, frames=range(f, min(len(ident), f + ATTRIBUTION_FRAMES))))
            near = obj is not None and near_segment_end(scene, obj, f, explain["segments"][(e.line, e.segment)],
                                                        explain["margin"])
            wrong.append(explain_count(e, obj, every, counted, ident, sides, near))
        counted.append(e)
    result = {"true_crossings": len(true), "matched": matched_seen, "double": doubles, "spurious": spurious,
              "all_true_crossings": len(every), "all_matched": matched}
    if explain is not None:
        missed = [explain_miss(t, ident, rows, events, explain["segments"][(t.line, t.segment)], explain["margin"],
                               explain["lost_frames"], MATCH_FRAMES) for t in open_.values() if _seen(scene, t)]
        result |= {f"miss_{k}": v for k, v in tally(missed, MISS_CLASSES).items()}
        result |= {f"count_{k}": v for k, v in tally(wrong, COUNT_CLASSES).items()}
    return result


def _apart(scene: Scene):
    """`apart(object, f1, f2)`: the frames from f1 to f2 on which the object is in view."""
    frames: dict[int, list[int]] = {}
    for f, ids in enumerate(scene.gt_ids):
        for obj in ids.tolist():
            frames.setdefault(obj, []).append(f)
    shown = {obj: np.asarray(f) for obj, f in frames.items()}

    def apart(obj: int, f1: int, f2: int) -> int:
        lo, hi = sorted((f1, f2))
        return int(np.searchsorted(shown[obj], hi, "right") - np.searchsorted(shown[obj], lo, "right"))
    return apart


def _seen(scene: Scene, crossing: LineCrossing) -> bool:
    """Whether a true crossing is scored: its object was in view on the frames before and after it (not
    behind a pillar), and it is not in the scene's first or last `MATCH_FRAMES` frames (objects start
    mid-walk; a count needs the margin passed)."""
    f = crossing.frame_index
    return (MATCH_FRAMES <= f < len(scene) - MATCH_FRAMES
            and crossing.track_id in scene.gt_ids[f - 1] and crossing.track_id in scene.gt_ids[f])


def _visits(events: list, key) -> list[tuple]:
    """(object, zone, enter time, exit time, dwell s) of each closed visit: its exit, which carries the
    dwell since the entry (under another track id when a new track took the visit over), `key(exit)`
    naming the object."""
    return [(key(e), e.zone, e.time - e.dwell_s, e.time, e.dwell_s)
            for e in events if isinstance(e, ZoneEvent) and e.kind == "exit"]


def score_zones(scene: Scene, truth: list, events: list, rows: list, attribution: str = "track") -> dict:
    true = _visits(truth, lambda e: e.track_id)
    ident = identities(scene, rows)
    counted = _visits(events, lambda e: track_object(ident, e.frame_index, e.track_id, attribution))
    errors = []
    for obj, zone, start, end, dwell in true:
        overlapping = [v[4] for v in counted if v[0] == obj and v[1] == zone and v[2] <= end and v[3] >= start]
        if overlapping:
            errors.append(abs(sum(overlapping) - dwell))
    return {"true_visits": len(true), "dwell_matched_n": len(errors), "dwell_error_sum_s": float(sum(errors)),
            "true_entries": sum(e.kind == "enter" for e in truth if isinstance(e, ZoneEvent)),
            "counted_entries": sum(e.kind == "enter" for e in events if isinstance(e, ZoneEvent))}


def detector_ms(width: int, height: int, calls: int) -> float:
    """The bundled detector's median call on a frame of this size (noise on grey: no objects to find)."""
    from edgefleet.models import load_default_detector

    detector = load_default_detector()
    image = np.clip(np.random.default_rng(0).normal(110, 30, (height, width, 3)), 0, 255).astype(np.uint8)
    detector.detect(image)  # warm-up
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        detector.detect(image)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


@dataclass(frozen=True)
class Options:
    margin: float | None = None
    """The zones' and lines' margin (None: agent.zones' default)."""
    attribution: str = "track"
    """How a count's object is found (`track_object`)."""
    explain: bool = False
    """Classify every miss and every count not right (analytics_explain)."""
    handoff: bool = True
    """New tracks take over lost ones' sides (agent.handoff); off: as before it was added."""
    line_memory: int = LINE_MEMORY_FRAMES
    """Frames a lost track's sides are kept (agent.analytics.LINE_MEMORY_FRAMES; 30 before)."""


def bench(objects: list[int], frames: int, seeds: list[int], crowd_seeds: list[int], intervals: list[int],
          fps: float, detect_ms: float, options: Options = Options()) -> dict:
    rows = []
    for n in objects:
        totals: dict[int, Counter] = {k: Counter() for k in intervals}
        cost: dict[str, list[float]] = {"track_s": [], "analytics_s": []}
        for seed in (crowd_seeds if n >= 100 else seeds):
            scene = make_scene(SceneSpec(objects=n, frames=frames, seed=seed))
            truth = true_events(scene, fps)
            for k in intervals:
                events, tracked, timing = replay(scene, k, fps, options.margin, options.handoff, options.line_memory)
                totals[k].update(score_lines(scene, truth, events, tracked, options.attribution,
                                             _explain_context(scene, options)))
                totals[k].update(score_zones(scene, truth, events, tracked, options.attribution))
                if k == 1:
                    for name in cost:
                        cost[name] += timing[name]
        for k in intervals:
            rows.append(_accuracy_row(n, k, totals[k]))
        rows[-len(intervals)]["cost"] = _cost(cost, detect_ms)
    return {"rows": rows}


def _explain_context(scene: Scene, options: Options) -> dict | None:
    """What analytics_explain needs: each segment's ends in pixels, the margin, the evaluator's memory."""
    if not options.explain:
        return None
    layout = StreamAnalytics.model_validate(analytics_layout(margin=options.margin))
    _, lines = layout.geometry(scene.spec.width, scene.spec.height)
    segments = {(ln.name, i): (ln.points[i], ln.points[i + 1]) for ln in lines for i in range(ln.segments)}
    return {"segments": segments, "margin": DEFAULT_MARGIN if options.margin is None else options.margin,
            "lost_frames": options.line_memory}


def _accuracy_row(objects: int, interval: int, t: Counter) -> dict:
    crossings = max(t["true_crossings"], 1)
    row = {"objects": objects, "interval": interval, "true_crossings": t["true_crossings"],
           "line_accuracy": round(t["matched"] / crossings, 4), "double_counts": round(t["double"] / crossings, 4),
           "spurious": round(t["spurious"] / crossings, 4), "all_true_crossings": t["all_true_crossings"],
           "all_accuracy": round(t["all_matched"] / max(t["all_true_crossings"], 1), 4),
           "true_visits": t["true_visits"],
           "dwell_matched": round(t["dwell_matched_n"] / max(t["true_visits"], 1), 4),
           "dwell_abs_error_s": round(t["dwell_error_sum_s"] / max(t["dwell_matched_n"], 1), 3),
           "zone_entries_ratio": round(t["counted_entries"] / max(t["true_entries"], 1), 3)}
    if any(name.startswith("miss_") for name in t):
        row["missed"] = {name: t[f"miss_{name}"] for name in MISS_CLASSES}
        row["not_right"] = {name: t[f"count_{name}"] for name in COUNT_CLASSES}
    return row


def _cost(cost: dict[str, list[float]], detect_ms: float) -> dict:
    analytics_us = float(np.mean(cost["analytics_s"]) * 1e6)
    track_us = float(np.mean(cost["track_s"]) * 1e6)
    frame_i1 = detect_ms * 1000 + track_us + analytics_us
    frame_i3 = detect_ms * 1000 / 3 + track_us + analytics_us
    return {"analytics_us": round(analytics_us, 1), "track_us": round(track_us, 1), "detect_ms": round(detect_ms, 2),
            "share_i1": round(analytics_us / frame_i1, 4), "share_i3": round(analytics_us / frame_i3, 4)}


def markdown(report: dict) -> str:
    lines = ["| objects | interval | true crossings | counted right | double | spurious | all crossings | "
             "all counted right | true visits | dwell matched | dwell error (s) | zone entries / true |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['objects']} | {r['interval']} | {r['true_crossings']} | {r['line_accuracy']:.1%} | "
                     f"{r['double_counts']:.1%} | {r['spurious']:.1%} | {r['all_true_crossings']} | "
                     f"{r['all_accuracy']:.1%} | {r['true_visits']} | "
                     f"{r['dwell_matched']:.1%} | {r['dwell_abs_error_s']:.2f} | {r['zone_entries_ratio']:.2f} |")
    lines += ["", "| objects | analytics µs/frame | tracker µs/frame | detector ms/call | share at interval 1 | "
              "share at interval 3 |", "|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        if "cost" in r:
            c = r["cost"]
            lines.append(f"| {r['objects']} | {c['analytics_us']:.0f} | {c['track_us']:.0f} | {c['detect_ms']:.1f} | "
                         f"{c['share_i1']:.2%} | {c['share_i3']:.2%} |")
    return "\n".join(lines + _explained(report))


def _explained(report: dict) -> list[str]:
    """The classes of misses and of counts not right (--explain), one row per (objects, interval)."""
    rows = [r for r in report["rows"] if "missed" in r]
    if not rows:
        return []
    lines = ["", "| objects | interval | " + " | ".join(f"miss: {n}" for n in MISS_CLASSES) + " | "
             + " | ".join(f"count: {n}" for n in COUNT_CLASSES) + " |",
             "|---:|---:|" + "---:|" * (len(MISS_CLASSES) + len(COUNT_CLASSES))]
    for r in rows:
        values = list(r["missed"].values()) + list(r["not_right"].values())
        lines.append(f"| {r['objects']} | {r['interval']} | " + " | ".join(str(v) for v in values) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", default="10,50,200")
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--seeds", default="0,1", help="seeds of scenes under 100 objects")
    parser.add_argument("--crowd-seeds", default="0", help="seeds of scenes with 100 objects or more")
    parser.add_argument("--intervals", default="1,2,3,4")
    parser.add_argument("--fps", type=float, default=30.0, help="the scenes' frame rate (capture times, dwell)")
    parser.add_argument("--detector-calls", type=int, default=10)
    parser.add_argument("--margin", type=float, help="the zones' and lines' margin (default: agent.zones')")
    parser.add_argument("--attribution", choices=("track", "frame"), default="track",
                        help="a count's object: its track's over nearby frames (default), or its box's on that frame")
    parser.add_argument("--explain", action="store_true", help="classify every miss and every count not right")
    parser.add_argument("--handoff", choices=("on", "off"), default="on",
                        help="new tracks take over lost ones' sides (off: the evaluator before it had this)")
    parser.add_argument("--line-memory", type=int, default=LINE_MEMORY_FRAMES,
                        help="frames a lost track's sides are kept (30: the evaluator before)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    spec = SceneSpec(objects=1)
    detect_ms = detector_ms(spec.width, spec.height, args.detector_calls) if args.detector_calls else 0.0
    options = Options(args.margin, args.attribution, args.explain, args.handoff == "on", args.line_memory)
    report = bench(int_list(args.objects), args.frames, int_list(args.seeds), int_list(args.crowd_seeds),
                   int_list(args.intervals), args.fps, detect_ms, options)
    report.update(layout=analytics_layout(margin=args.margin), match_frames=MATCH_FRAMES, attribution=args.attribution,
                  handoff=args.handoff, line_memory=args.line_memory, seeds=args.seeds, crowd_seeds=args.crowd_seeds,
                  machine=platform.processor() or platform.machine(), wall_s=round(time.perf_counter() - started, 1))
    print(markdown(report), file=sys.stderr)
    write_report(report, args.out)


if __name__ == "__main__":
    main()
