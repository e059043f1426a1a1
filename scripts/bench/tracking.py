#!/usr/bin/env python3
"""Tracker quality and speed on synthetic scenes with exact ground truth, and skip fidelity on vtest.avi.

    python scripts/bench/tracking.py [--objects 10,50,200] [--frames 300] [--seeds 0,1,2] [--crowd-seeds 0]
                                     [--repeats 3] [--intervals 1,2,3,4,5,6] [--peers trackers,ultralytics]
                                     [--video var/samples/vtest.avi] [--video-frames 795]
                                     [--coast-missed-detections N] [--out FILE]

Synthetic scenes (scripts/bench/scenes.py): every tracker gets the same detections, frame by frame:
- `edgefleet`: agent.bytetrack.ByteTrack with its defaults (what the agent runs);
- `edgefleet-no-refind`: the same with `refind_lost_with_low_confidence` off, i.e. the second
  association of the paper's released code; shown to say where our difference to the peers comes from;
- `trackers`: Roboflow trackers' ByteTrackTracker, with the thresholds that share a meaning set to
  ours (high 0.5, activation 0.6, buffer 30 at 30 fps, 2 frames to confirm); it has no low
  threshold and no score-fused cost, so its IoU gate stays its own default (0.1);
- `ultralytics`: ultralytics.trackers.byte_tracker.BYTETracker with bytetrack.yaml's keys set to the
  paper's values (identical to ours), fed a minimal Boxes-like adapter.
Each tracker's output is scored on the input boxes of the rows it tracked (all report the input
row: ours and trackers return the rows, Ultralytics its `idx` column), so the metrics compare
association, not box smoothing. Metrics come from `trackers.eval` (TrackEval's CLEAR, Identity
and HOTA): MOTA, ID switches, IDF1, HOTA, at IoU 0.5.

Time per update is the tracker's `update()` call alone (inputs are built beforehand), the minimum
over `--repeats` runs of each frame (the trackers run interleaved, so background load hits all
alike), averaged over frames.

Detect interval k: our tracker gets detections on every k-th frame only and `predict_only()`
between; the predicted boxes are what is scored on those frames (`--coast-missed-detections`
overrides ours for this curve and skip fidelity). The chosen interval is the
largest k whose IDF1, and every smaller k's, is at most `MAX_IDF1_LOSS` below k = 1 at every
density.

Skip fidelity, on a real video: the bundled detector runs once per frame (cached), then our
tracker runs at each interval k on those detections (every k-th frame detected, predicted in
between) and its output is scored against its own interval-1 output at IoU 0.5: recall and
precision say how well predicted boxes stand in for detected ones, IDF1 and ID switches how
consistent the ids stay (the same metric functions, interval 1 as the ground truth).

Writes JSON to --out (or stdout) and markdown tables to stderr.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from report import write_report  # (scripts/bench/report.py)
from scenes import Scene, SceneSpec, describe, int_list, make_scene  # (scripts/bench/scenes.py)

from edgefleet.agent.bytetrack import ByteTrack, ByteTrackConfig
from edgefleet.models.detections import Detections

OURS = ByteTrackConfig()
MAX_IDF1_LOSS = 0.02
"""The detect interval chosen is the largest that loses at most this much IDF1 (2 points)."""
Output = list[tuple[np.ndarray, np.ndarray]]  # per frame: (track ids, xyxy)


class Tracker:
    """A tracker under test: `prepare` turns Detections into its input (untimed), `update` is timed,
    `result` turns its output into (ids, xyxy of the input rows)."""

    name = ""

    def prepare(self, dets: Detections):
        return dets

    def update(self, prepared):
        raise NotImplementedError

    def result(self, dets: Detections, out) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class Ours(Tracker):
    name = "edgefleet"
    CONFIG = OURS

    def __init__(self) -> None:
        self.tracker = ByteTrack(self.CONFIG)

    def update(self, prepared):
        return self.tracker.update(prepared)

    def result(self, dets, out):
        return out.tracker_id, out.xyxy

    @classmethod
    def config(cls) -> dict:
        return dataclasses.asdict(cls.CONFIG)


class OursNoRefind(Ours):
    """Ours with the released code's second association (tracked tracks only)."""

    name = "edgefleet-no-refind"
    CONFIG = dataclasses.replace(OURS, refind_lost_with_low_confidence=False)


class RoboflowTrackers(Tracker):
    name = "trackers"
    KWARGS = dict(high_conf_det_threshold=OURS.high_confidence_threshold,
                  track_activation_threshold=OURS.track_activation_threshold,
                  lost_track_buffer=OURS.lost_track_buffer, frame_rate=OURS.frame_rate,
                  minimum_consecutive_frames=OURS.minimum_consecutive_frames)

    def __init__(self) -> None:
        from trackers import ByteTrackTracker
        self.tracker = ByteTrackTracker(**self.KWARGS)

    def prepare(self, dets):
        import supervision as sv
        return sv.Detections(xyxy=dets.xyxy.astype(np.float64), confidence=dets.confidence,
                             class_id=dets.class_id.astype(int))

    def update(self, prepared):
        return self.tracker.update(prepared)

    def result(self, dets, out):
        keep = out.tracker_id != -1  # its unconfirmed rows
        return out.tracker_id[keep].astype(np.int64), out.xyxy[keep].astype(np.float32)

    @classmethod
    def config(cls) -> dict:
        return {**cls.KWARGS, "minimum_iou_threshold": "default (0.1)"}


class _Boxes:
    """What BYTETracker reads from Ultralytics' Boxes: conf, cls, xywh (centre), boolean indexing."""

    def __init__(self, xyxy: np.ndarray, conf: np.ndarray, cls: np.ndarray) -> None:
        self.xyxy, self.conf, self.cls = xyxy, conf, cls
        self.xywh = np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], axis=1)

    def __len__(self) -> int:
        return len(self.conf)

    def __getitem__(self, index) -> _Boxes:
        return _Boxes(self.xyxy[index], self.conf[index], self.cls[index])


class UltralyticsByteTrack(Tracker):
    name = "ultralytics"
    ARGS = dict(tracker_type="bytetrack", track_high_thresh=OURS.high_confidence_threshold,
                track_low_thresh=OURS.low_confidence_threshold, new_track_thresh=OURS.track_activation_threshold,
                track_buffer=OURS.lost_track_buffer, match_thresh=OURS.minimum_matching_threshold,
                fuse_score=OURS.fuse_score)

    def __init__(self) -> None:
        from ultralytics.trackers.byte_tracker import BYTETracker
        self.tracker = BYTETracker(SimpleNamespace(**self.ARGS))

    def prepare(self, dets):
        return _Boxes(dets.xyxy, dets.confidence, dets.class_id.astype(np.float32))

    def update(self, prepared):
        return self.tracker.update(prepared)

    def result(self, dets, out):
        if not len(out):
            return np.zeros(0, np.int64), np.zeros((0, 4), np.float32)
        return out[:, 4].astype(np.int64), dets.xyxy[out[:, 7].astype(np.intp)]

    @classmethod
    def config(cls) -> dict:
        return dict(cls.ARGS)


PEERS = {"trackers": RoboflowTrackers, "ultralytics": UltralyticsByteTrack}


def run_interleaved(makers: dict, scene: Scene, repeats: int) -> dict[str, tuple[Output, np.ndarray]]:
    """Per tracker: the outputs of its first run and each frame's minimum update time (s)."""
    inputs = {name: [make().prepare(d) for d in scene.detections] for name, make in makers.items()}
    outputs = {}
    best = {name: np.full(len(scene), np.inf) for name in makers}
    for r in range(repeats):
        for name, make in makers.items():
            tracker, clock, out_of_run = make(), time.perf_counter, []
            for t, prepared in enumerate(inputs[name]):
                start = clock()
                out = tracker.update(prepared)
                best[name][t] = min(best[name][t], clock() - start)
                if r == 0:
                    out_of_run.append(tracker.result(scene.detections[t], out))
            outputs.setdefault(name, out_of_run)
    return {name: (outputs[name], best[name]) for name in makers}


def run_interval(detections: list[Detections], interval: int, config: ByteTrackConfig = OURS) -> Output:
    """Our tracker with detections on every `interval`-th frame, predictions in between."""
    tracker, outputs = ByteTrack(config), []
    for t, dets in enumerate(detections):
        out, _ = tracker.step(dets if t % interval == 0 else None)
        outputs.append((out.tracker_id, out.xyxy))
    return outputs


def evaluate(gt: Output, outputs: Output, metrics: tuple[str, ...] = ("CLEAR", "Identity", "HOTA")) -> dict:
    """`outputs` scored against `gt` (both per frame: ids, xyxy) with trackers.eval, at IoU 0.5."""
    from trackers.eval import box_iou, compute_clear_metrics, compute_hota_metrics, compute_identity_metrics
    gt_ids = _contiguous([ids for ids, _ in gt])
    tr_ids = _contiguous([ids for ids, _ in outputs])
    sims = [box_iou(g.astype(np.float64), b.astype(np.float64)) for (_, g), (_, b) in zip(gt, outputs, strict=True)]
    result = {}
    if "CLEAR" in metrics:
        clear = compute_clear_metrics(gt_ids, tr_ids, sims, threshold=0.5)
        result.update(MOTA=clear["MOTA"], IDSW=int(clear["IDSW"]), FP=int(clear["CLR_FP"]),
                      FN=int(clear["CLR_FN"]), recall=clear["CLR_Re"], precision=clear["CLR_Pr"])
    if "Identity" in metrics:
        result["IDF1"] = compute_identity_metrics(gt_ids, tr_ids, sims, threshold=0.5)["IDF1"]
    if "HOTA" in metrics:
        hota = compute_hota_metrics(gt_ids, tr_ids, sims)
        result.update(HOTA=hota["HOTA"], DetA=hota["DetA"], AssA=hota["AssA"])
    result["tracks"] = len(np.unique(np.concatenate(tr_ids))) if outputs else 0
    return {k: round(float(v), 4) if isinstance(v, float) else v for k, v in result.items()}


def video_detections(video: Path, frames: int) -> list[Detections]:
    """The bundled detector's output on the first `frames` frames of `video`, one entry per frame."""
    import cv2

    from edgefleet.models import load_default_detector

    detector, capture, detections = load_default_detector(), cv2.VideoCapture(str(video)), []
    try:
        while len(detections) < frames:
            ok, image = capture.read()
            if not ok:
                break
            detections.append(detector.detect(image))
    finally:
        capture.release()
    return detections


def skip_fidelity(detections: list[Detections], intervals: list[int], config: ByteTrackConfig = OURS) -> dict:
    """Each interval's output scored against interval 1's on the same detections."""
    reference = run_interval(detections, 1, config)
    return {k: evaluate(reference, run_interval(detections, k, config), ("CLEAR", "Identity")) for k in intervals}


def ground_truth(scene: Scene) -> Output:
    return list(zip(scene.gt_ids, scene.gt_xyxy))


def _contiguous(per_frame: list[np.ndarray]) -> list[np.ndarray]:
    """Ids renumbered 0..k-1 over the sequence, as the metric functions require."""
    everything = np.concatenate(per_frame) if per_frame else np.zeros(0, np.int64)
    unique = np.unique(everything)
    return [np.searchsorted(unique, ids).astype(np.intp) for ids in per_frame]


CROWD = 100
"""Scenes with this many objects or more run `--crowd-seeds` (one 200-object scene holds seven
times the boxes of three 10-object scenes, and costs the peers seconds per run)."""
METRICS = ("IDF1", "MOTA", "HOTA", "IDSW", "us_per_update")


def bench(objects: list[int], frames: int, seeds: list[int], crowd_seeds: list[int], repeats: int,
          intervals: list[int], peers: list[str], interval_config: ByteTrackConfig = OURS) -> dict:
    makers = {Ours.name: Ours, OursNoRefind.name: OursNoRefind}
    for name in peers:
        try:
            PEERS[name]()
            makers[name] = PEERS[name]
        except ImportError as err:
            print(f"peer {name} skipped: {err}", file=sys.stderr)
    report = {"host": {"python": platform.python_version(), "machine": platform.machine(),
                       "numpy": np.__version__},
              "configs": {name: make.config() for name, make in makers.items()}, "scenes": [], "summary": []}
    for n in objects:
        entries = []
        for seed in crowd_seeds if n >= CROWD else seeds:
            scene = make_scene(SceneSpec(objects=n, frames=frames, seed=seed))
            gt = ground_truth(scene)
            entry = {"scene": describe(scene), "trackers": {}, "detect_interval": {}}
            for name, (outputs, seconds) in run_interleaved(makers, scene, repeats).items():
                entry["trackers"][name] = {**evaluate(gt, outputs),
                                           "us_per_update": round(float(seconds.mean()) * 1e6, 1),
                                           "us_per_update_p50": round(float(np.median(seconds)) * 1e6, 1)}
            for k in intervals:
                entry["detect_interval"][k] = evaluate(gt, run_interval(scene.detections, k, interval_config),
                                                       ("CLEAR", "Identity"))
            entries.append(entry)
            print(f"scene objects={n} seed={seed} done", file=sys.stderr)
        report["scenes"] += entries
        report["summary"].append(summarize(n, entries, list(makers)))
    report["chosen_interval"] = choose_interval(report["summary"])
    return report


def summarize(objects: int, entries: list[dict], names: list[str]) -> dict:
    """Means over the seeds of one density; our time and IDF1 against each peer."""
    mean = {name: {m: round(float(np.mean([e["trackers"][name][m] for e in entries])), 4) for m in METRICS}
            for name in names}
    curve = {k: round(float(np.mean([e["detect_interval"][k]["IDF1"] for e in entries])), 4)
             for k in entries[0]["detect_interval"]}
    versus = {}
    for peer in (p for p in names if p in PEERS):
        versus[peer] = {
            "time_ratio": round(mean[Ours.name]["us_per_update"] / mean[peer]["us_per_update"], 3),
            "idf1_delta": round(mean[Ours.name]["IDF1"] - mean[peer]["IDF1"], 4),
        }
        versus[peer]["target_met"] = versus[peer]["idf1_delta"] >= 0 and versus[peer]["time_ratio"] <= 0.5
    return {"objects": objects, "seeds": [e["scene"]["spec"]["seed"] for e in entries], "mean": mean,
            "versus": versus, "detect_interval_idf1": curve}


def choose_interval(summaries: list[dict], max_loss: float = MAX_IDF1_LOSS) -> int:
    """The largest k such that k and every smaller interval lose at most `max_loss` IDF1 against
    k = 1, at every density."""
    chosen = 1
    for k in sorted(summaries[0]["detect_interval_idf1"]) if summaries else []:
        if k != 1 and any(s["detect_interval_idf1"][1] - s["detect_interval_idf1"][k] > max_loss for s in summaries):
            break
        chosen = k
    return chosen


def markdown(report: dict) -> str:
    peers = [p for p in PEERS if p in report["configs"]]
    lines = ["Means over seeds; time per update in µs; ratio = ours / the peer's time.", "",
             "| objects | seeds | tracker | IDF1 | MOTA | HOTA | IDSW | µs/update | "
             + " | ".join(f"ratio vs {p}" for p in peers) + " |",
             "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in peers) + " |"]
    for s in report["summary"]:
        for name, m in s["mean"].items():
            ratios = [str(s["versus"][p]["time_ratio"]) if name == Ours.name else "" for p in peers]
            lines.append(f"| {s['objects']} | {len(s['seeds'])} | {name} | {m['IDF1']:.3f} | {m['MOTA']:.3f} | "
                         f"{m['HOTA']:.3f} | {m['IDSW']:.1f} | {m['us_per_update']:.0f} | " + " | ".join(ratios) + " |")
    intervals = list(report["summary"][0]["detect_interval_idf1"]) if report["summary"] else []
    lines += ["", ("IDF1 of edgefleet by detect interval k (predicted boxes on skipped frames); "
                   f"chosen k = {report['chosen_interval']} (loses <= {MAX_IDF1_LOSS * 100:.0f} IDF1 points):"), "",
              "| objects | " + " | ".join(f"k={k}" for k in intervals) + " |",
              "| ---: | " + " | ".join("---:" for _ in intervals) + " |"]
    for s in report["summary"]:
        scores = " | ".join(f"{s['detect_interval_idf1'][k]:.3f}" for k in intervals)
        lines.append(f"| {s['objects']} | {scores} |")
    if report.get("skip_fidelity"):
        fidelity = report["skip_fidelity"]
        lines += ["", (f"Skip fidelity on {fidelity['video']} ({fidelity['frames']} frames, bundled detector): "
                       "interval k against interval 1, IoU >= 0.5:"), "",
                  "| k | recall | precision | IDF1 (id consistency) | IDSW |", "| ---: | ---: | ---: | ---: | ---: |"]
        for k, m in fidelity["intervals"].items():
            lines.append(f"| {k} | {m['recall']:.3f} | {m['precision']:.3f} | {m['IDF1']:.3f} | {m['IDSW']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", default="10,50,200")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--seeds", default="0,1,2", help=f"seeds of scenes under {CROWD} objects")
    parser.add_argument("--crowd-seeds", default="0", help=f"seeds of scenes with {CROWD} objects or more")
    parser.add_argument("--repeats", type=int, default=3, help="timing runs per tracker (the minimum counts)")
    parser.add_argument("--intervals", default="1,2,3,4,5,6")
    parser.add_argument("--peers", default="trackers,ultralytics")
    parser.add_argument("--video", type=Path, default=ROOT / "var" / "samples" / "vtest.avi",
                        help="real video for skip fidelity")
    parser.add_argument("--video-frames", type=int, default=795, help="its frames to use (0: no skip fidelity)")
    parser.add_argument("--coast-missed-detections", type=int, default=OURS.coast_missed_detections,
                        help="ours, for the detect-interval curve and skip fidelity")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    interval_config = dataclasses.replace(OURS, coast_missed_detections=args.coast_missed_detections)
    report = bench(int_list(args.objects), args.frames, int_list(args.seeds), int_list(args.crowd_seeds), args.repeats,
                   int_list(args.intervals), [p for p in args.peers.split(",") if p], interval_config)
    report["interval_config"] = dataclasses.asdict(interval_config)
    if args.video_frames:
        detections = video_detections(args.video, args.video_frames)
        report["skip_fidelity"] = {"video": args.video.name, "frames": len(detections),
                                   "intervals": skip_fidelity(detections, int_list(args.intervals), interval_config)}
    report["wall_s"] = round(time.perf_counter() - started, 1)
    print(markdown(report), file=sys.stderr)
    write_report(report, args.out)


if __name__ == "__main__":
    main()
