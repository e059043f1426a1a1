#!/usr/bin/env python3
"""Detector speed on vtest.avi: our overhead over raw inference, and our detector against Ultralytics' predict.

    python scripts/bench/detector.py [--sizes 320,416,640] [--batch-sizes 1,4] [--frames 100]
        [--threads N] [--rounds 12] [--block 5] [--skip-ultralytics] [--cache-dir DIR] [--out FILE]
    python scripts/bench/detector.py --backends onnxruntime,openvino,ncnn --precisions fp32,int8[,bf16]
        [--sizes 320,416] [--frames 100] [--calib-frames 32] [--held-frames 50] [--threads N] [--out FILE]

With --backends: CPU backends x precisions x sizes at batch 1, speed and agreement with the FP32
source, and nothing else; see scripts/bench/detector_backends.py. Without it:

One run, one JSON (--out, or stdout), two sections, for every square input size and batch size:

`bundled_yolov3_tiny`: the bundled model (`models.load_default_detector`) on ONNX Runtime.
`raw_inference_ms` times session.run on tensors letterboxed beforehand; `detect_ms` times
detect_batch() (letterbox + inference + decode + NMS + mapping back to source pixels);
`letterbox_ms` and `decode_nms_ms` are the parts around inference. All timed in turn, call by
call, per call (one call = one batch), p50/p95. `overhead_ratio` = (call - its own inference) /
inference, summed over the calls: paired, so machine drift cancels out.

`yolov8n_vs_ultralytics`: yolov8n.yaml built with `models.export.build_untrained` (seed 0, COCO
names, about 0.4% of anchors above 0.25: tens of boxes a frame at 640; no weights are
downloaded, there are none here) and exported (dynamic, raw head) once, into a cache folder.
On that one ONNX file: `raw_ms` is our session's session.run alone on tensors letterboxed
beforehand, `ours_ms` our detect_batch(), and `ultralytics_ms` YOLO(file).predict() on the same
list of frames (its own letterbox, inference, NMS and scaling; rect=False, so it letterboxes to
the same full size; a list of `batch` frames runs as one batch). Per call, p50/p95.
`*_outside_inference_ms_per_frame_p50`: each call less its own inference (ours: its session.run;
Ultralytics: its `speed["inference"]`), per frame: what each pipeline adds around the same model.
`ultralytics_speed_ms` is Ultralytics' own per-frame account (preprocess, inference, postprocess),
and `nms` the part of postprocess spent in `torchvision.ops.nms`.
`overhead_ratio` = (call - its own session.run) / session.run, summed over the counted calls,
as above; `speed_ratio` = Ultralytics / ours at the same batch size (above 1: ours is faster).
Both sessions use ONNX Runtime's default threads unless --threads, which only ours honours
(Ultralytics' predict does not expose session options).
For each size and batch size the three measurements are interleaved in blocks: each of --rounds
rounds runs a block of --block calls of each, in an order that rotates from round to round, and
`speed_ratio` is the median over rounds of the ratio of the two blocks' p50s, so drift between
rounds cancels out. Not call by call: two ONNX Runtime sessions alternating call by call make
each other's spinning worker threads compete for the cores (measured on 2 cores: session.run
14.6 ms in a block, 44 ms right after a predict), which would measure that contention instead
of the detectors; the first 2 calls of every block are run but not counted, for the same reason.

Ultralytics' predict needs `torchvision.ops.nms`. Where torchvision's C++ ops do not load, the
test shim `tests.torchvision_nms` stands in (greedy NMS in plain torch, stepped in Python once
per kept box), and `torchvision_nms` says so: Ultralytics' `nms` time is then well above what
torchvision's C++ kernel would take, which flatters `speed_ratio` when frames have many boxes.
Without the train extra, or with --skip-ultralytics, the section says why it was skipped.

`summary`: one row per size and batch size with the ratios the benchmark is read for.

`read_frames` and `bench_bundled` are also imported by scripts/bench/loop.py and agent_vtest.py.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from report import write_report  # (scripts/bench/report.py)

from edgefleet.models import load_default_detector
from edgefleet.models.backends import create_detector
from edgefleet.models.yolo import decode_darknet, letterbox_batch, nms

CONFIDENCE, IOU = 0.25, 0.45
SETTLE_CALLS = 2


# ---- frames, statistics, host ----

def default_video() -> Path:
    samples = Path(os.environ.get("EDGEFLEET_SAMPLES", ROOT / "var" / "samples")) / "vtest.avi"
    return samples if samples.exists() else Path("/tmp/vtest.avi")


def read_frames(video: Path, count: int) -> list[np.ndarray]:
    """The first `count` frames of `video` (fewer if it is shorter)."""
    cap = cv2.VideoCapture(str(video))
    frames = []
    while len(frames) < count:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    if not frames:
        raise SystemExit(f"no frames could be read from {video}")
    return frames


def batches(frames: list[np.ndarray], batch: int) -> list[list[np.ndarray]]:
    """`frames` cycled into groups of `batch`, at least one group."""
    return [[frames[(i * batch + j) % len(frames)] for j in range(batch)]
            for i in range(max(1, len(frames) // batch))]


def percentiles(values_ms: list[float]) -> dict:
    arr = np.asarray(values_ms)
    return {"p50": round(float(np.percentile(arr, 50)), 2), "p95": round(float(np.percentile(arr, 95)), 2),
            "n": len(values_ms)}


def host_info(detector=None) -> dict:
    import onnxruntime

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"machine": platform.machine(), "cpu": cpu, "logical_cpus": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__, "opencv": cv2.__version__,
            "onnxruntime": onnxruntime.__version__}
    if detector is not None:
        info["providers"] = detector.providers
    return info


# ---- section 1: the bundled model, overhead over raw inference ----

def bench_bundled(size: int, batch: int, frames: list[np.ndarray], threads: int | None = None,
                  cache_dir: Path | None = None, warmup: int = 3) -> dict:
    """The bundled yolov3-tiny at a square input `size`, one batch size; frames are cycled into batches."""
    detector = load_default_detector(cache_dir=cache_dir, input_size=(size, size), intra_op_threads=threads)
    groups = batches(frames, batch)
    prepared = [letterbox_batch(group, detector.input_size)[0] for group in groups]
    for tensor, group in zip(prepared[:warmup], groups[:warmup]):
        detector.infer(tensor)
        detector.detect_batch(group)
    raw, pre, post, full, inner = [], [], [], [], []
    detections = 0
    for tensor, group in zip(prepared, groups):  # call by call on one session: both see the same machine
        outputs = detector.infer(tensor)
        raw.append(detector.last_inference_ms)
        start = time.perf_counter()
        candidates = decode_darknet(outputs, detector.anchors, detector.masks, detector.input_size,
                                    detector.confidence_threshold)
        for xyxy, score, class_id in candidates:
            nms(xyxy, score, class_id, detector.iou_threshold)
        post.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        letterbox_batch(group, detector.input_size)
        pre.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        results = detector.detect_batch(group)
        full.append((time.perf_counter() - start) * 1000)
        inner.append(detector.last_inference_ms)  # the inference inside this very call
        detections += sum(len(r) for r in results)
    detect = percentiles(full)
    result = {
        "input_size": [size, size], "batch": batch, "calls": len(groups), "threads": threads,
        "provider": detector.providers[0],
        "raw_inference_ms": percentiles(raw),
        "detect_ms": detect,
        "letterbox_ms": percentiles(pre),
        "decode_nms_ms": percentiles(post),
        "raw_inference_ms_per_frame_p50": round(float(np.percentile(raw, 50)) / batch, 2),
        "detect_ms_per_frame_p50": round(detect["p50"] / batch, 2),
        "detect_fps": round(1000.0 * batch / detect["p50"], 1),
        "detections_per_frame": round(detections / (len(groups) * batch), 2),
        # (call - its own inference) / inference, paired call by call, so machine drift cancels out
        "overhead_ratio": round(float((np.sum(full) - np.sum(inner)) / np.sum(inner)), 4),
    }
    detector.close()
    return result


# ---- section 2: yolov8n, ours against Ultralytics' predict on the same ONNX file ----

def prepare_ultralytics() -> tuple[str | None, str | None]:
    """Ultralytics importable and its NMS usable: ("torchvision" | "test-shim", None), or (None, why not)."""
    if importlib.util.find_spec("ultralytics") is None:
        return None, "ultralytics is not installed: pip install 'edgefleet[train]'"
    from edgefleet.models.backends.ultralytics import import_ultralytics
    from edgefleet.models.errors import BackendUnavailable
    from tests.torchvision_nms import install_torchvision_nms_fallback

    try:
        torchvision_nms = install_torchvision_nms_fallback()
        import_ultralytics()  # offline, no auto-install; checks torchvision.ops.nms
    except (ModuleNotFoundError, BackendUnavailable) as err:
        return None, str(err)
    return torchvision_nms, None


def yolov8n_onnx(cache_dir: Path) -> Path:
    """yolov8n.yaml built untrained (seed 0, COCO names) and exported to ONNX (dynamic, raw head), cached."""
    from ultralytics.utils import ROOT as ULTRALYTICS_ROOT
    from ultralytics.utils import YAML

    from edgefleet.models.export import build_untrained, export_ultralytics

    cache_dir.mkdir(parents=True, exist_ok=True)
    pt = cache_dir / "yolov8n-untrained.pt"
    if not pt.is_file():
        coco = YAML.load(ULTRALYTICS_ROOT / "cfg" / "datasets" / "coco.yaml")["names"]
        build_untrained("yolov8n.yaml", pt, seed=0, names=[str(n) for n in coco.values()], passing_fraction=0.004)
    onnx = cache_dir / f"{pt.stem}.onnx"
    return onnx if onnx.is_file() else export_ultralytics(pt, cache_dir, imgsz=640, dynamic=True)


def run_interleaved(steps: dict, rounds: int, block: int) -> dict:
    """Time every step in blocks of `block` calls (after SETTLE_CALLS uncounted ones), rotating who goes first.

    steps: key -> call(call number). Returns key -> (ms per counted call, what those calls returned).
    """
    keys = list(steps)
    measured = {key: ([], []) for key in keys}
    calls = dict.fromkeys(keys, 0)
    for round_ in range(rounds):
        shift = round_ % len(keys)
        for key in keys[shift:] + keys[:shift]:
            for k in range(SETTLE_CALLS + block):
                start = time.perf_counter()
                returned = steps[key](calls[key])
                elapsed = (time.perf_counter() - start) * 1000.0
                calls[key] += 1
                if k >= SETTLE_CALLS:  # the first calls of a block still meet the other runtime's spinning threads
                    measured[key][0].append(elapsed)
                    measured[key][1].append(returned)
    return measured


@contextlib.contextmanager
def timed_torchvision_nms(total_ms: list[float]):
    """Add the time of every `torchvision.ops.nms` call (Ultralytics' NMS) to total_ms[0] while inside."""
    import torchvision

    nms_op = torchvision.ops.nms

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return nms_op(*args, **kwargs)
        finally:
            total_ms[0] += (time.perf_counter() - start) * 1000.0

    torchvision.ops.nms = timed  # Ultralytics looks it up at every call
    try:
        yield
    finally:
        torchvision.ops.nms = nms_op


def paired_ratio(numerator_ms: list[float], denominator_ms: list[float], block: int) -> float:
    """Median over rounds of (numerator's block p50 / denominator's block p50): blocks of a round ran close in time."""
    return round(float(np.median([np.median(numerator_ms[i:i + block]) / np.median(denominator_ms[i:i + block])
                                  for i in range(0, len(denominator_ms), block)])), 3)


def outside_inference(call_ms: list[float], calls: list, batch: int) -> float:
    """p50 per frame of a call's time less its own inference: pre- and post-processing, call overheads."""
    return round(float(np.median([total - inference for total, (_, inference) in zip(call_ms, calls)])) / batch, 2)


def boxes_per_frame(calls: list, batch: int) -> float:
    """Boxes per frame over the counted calls, each (per-frame Detections or Ultralytics Results, inference ms)."""
    return round(sum(len(frame) for results, _ in calls for frame in results) / (len(calls) * batch), 2)


def bench_vs_ultralytics(model: Path, size: int, batch_sizes: list[int], frames: list[np.ndarray],
                         threads: int | None, rounds: int, block: int) -> list[dict]:
    """Raw inference, our detector and Ultralytics' predict at one input size, every batch size, interleaved."""
    from ultralytics import YOLO

    ours = create_detector({"type": "onnxruntime", "model": model, "input_size": (size, size),
                            "confidence_threshold": CONFIDENCE, "iou_threshold": IOU, "intra_op_threads": threads})
    theirs = YOLO(str(model), task="detect")
    nms_ms = [0.0]  # time spent in torchvision.ops.nms during the current predict call

    def raw(tensor):
        ours.infer(tensor)
        return [], ours.last_inference_ms

    def mine(group):
        return ours.detect_batch(group), ours.last_inference_ms  # the session.run inside this very call

    def predict(group):
        nms_ms[0] = 0.0
        results = theirs.predict(group, imgsz=size, conf=CONFIDENCE, iou=IOU, rect=False, batch=len(group),
                                 verbose=False)
        results[0].speed["nms"] = nms_ms[0] / len(group)  # its speed dict is per frame
        return results, results[0].speed["inference"] * len(group)

    runs = []
    for batch in batch_sizes:
        groups = batches(frames, batch)
        tensors = [letterbox_batch(group, ours.input_size)[0] for group in groups]
        steps = {"raw": lambda i, tensors=tensors: raw(tensors[i % len(tensors)]),
                 "ours": lambda i, groups=groups: mine(groups[i % len(groups)]),
                 "ultralytics": lambda i, groups=groups: predict(groups[i % len(groups)])}
        with timed_torchvision_nms(nms_ms):
            measured = run_interleaved(steps, rounds, block)
        raw_ms, _ = measured["raw"]
        ours_ms, ours_calls = measured["ours"]
        their_ms, their_calls = measured["ultralytics"]
        ours_inner = [inference for _, inference in ours_calls]
        ours_frame, their_frame = np.median(ours_ms) / batch, np.median(their_ms) / batch
        runs.append({
            "input_size": [size, size], "batch": batch, "calls": len(ours_ms), "threads": threads,
            "provider": ours.providers[0],
            "raw_ms": percentiles(raw_ms), "ours_ms": percentiles(ours_ms), "ultralytics_ms": percentiles(their_ms),
            "ours_ms_per_frame_p50": round(float(ours_frame), 2),
            "ultralytics_ms_per_frame_p50": round(float(their_frame), 2),
            "ours_outside_inference_ms_per_frame_p50": outside_inference(ours_ms, ours_calls, batch),
            "ultralytics_outside_inference_ms_per_frame_p50": outside_inference(their_ms, their_calls, batch),
            "ultralytics_speed_ms": {stage: round(float(np.median([r[0].speed[stage] for r, _ in their_calls])), 2)
                                     for stage in ("preprocess", "inference", "postprocess", "nms")},
            "ours_detections_per_frame": boxes_per_frame(ours_calls, batch),
            "ultralytics_detections_per_frame": boxes_per_frame(their_calls, batch),
            # (call - its own session.run) / session.run over the counted calls, paired: drift cancels out
            "overhead_ratio": round(float((np.sum(ours_ms) - np.sum(ours_inner)) / np.sum(ours_inner)), 4),
            "speed_ratio": paired_ratio(their_ms, ours_ms, block),
        })
    ours.close()
    return runs


def summary(bundled: list[dict], versus: list[dict] | None) -> list[dict]:
    """One row per size and batch: the ratios the benchmark is read for."""
    rows = []
    for entry in bundled:
        row = {"input_size": entry["input_size"][0], "batch": entry["batch"],
               "bundled_overhead_ratio": entry["overhead_ratio"]}
        match = [v for v in versus or [] if v["input_size"] == entry["input_size"] and v["batch"] == entry["batch"]]
        if match:
            row |= {"yolov8n_overhead_ratio": match[0]["overhead_ratio"], "speed_ratio": match[0]["speed_ratio"]}
        rows.append(row)
    return rows


def bench_backends(args: argparse.Namespace) -> int:
    """The --backends matrix (scripts/bench/detector_backends.py) as its own JSON."""
    from detector_backends import run

    matrix = run(args.video, [int(s) for s in args.sizes.split(",")], args.backends.split(","),
                 args.precisions.split(","), frames=args.frames, calib_frames=args.calib_frames,
                 held_frames=args.held_frames, threads=args.threads, rounds=args.rounds, block=args.block,
                 cache_dir=args.cache_dir)
    report = {"benchmark": "models detector backends", "video": args.video.name, "host": host_info()} | matrix
    write_report(report, args.out)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=default_video())
    parser.add_argument("--frames", type=int, default=100, help="frames read from the start of the video")
    parser.add_argument("--sizes", default="416", help="square network inputs, multiples of 32 (e.g. 320,416,640)")
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--threads", type=int, default=None,
                        help="onnxruntime intra-op threads, ours only (default: its own choice, as Ultralytics')")
    parser.add_argument("--rounds", type=int, default=12, help="yolov8n: blocks of each measurement, interleaved")
    parser.add_argument("--block", type=int, default=5,
                        help=f"yolov8n: calls measured per block (after {SETTLE_CALLS} settling calls)")
    parser.add_argument("--skip-ultralytics", action="store_true", help="the bundled model's section only")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="the bundled model's converted-model cache (default: the one models.bundled uses); "
                             "yolov8n is built and exported into <cache-dir>/ultralytics (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: stdout)")
    parser.add_argument("--backends", default=None,
                        help="CPU backends to compare (onnxruntime,openvino,ncnn); see detector_backends.py")
    parser.add_argument("--precisions", default="fp32,int8", help="with --backends: fp32, int8, bf16 (openvino)")
    parser.add_argument("--calib-frames", type=int, default=32, help="with --backends: INT8 calibration frames")
    parser.add_argument("--held-frames", type=int, default=50, help="with --backends: frames scoring agreement")
    args = parser.parse_args()
    if args.backends:
        return bench_backends(args)
    frames = read_frames(args.video, args.frames)
    sizes = [int(s) for s in args.sizes.split(",")]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    bundled = [bench_bundled(size, batch, frames, args.threads, args.cache_dir)
               for size in sizes for batch in batch_sizes]
    report = {"benchmark": "models detector", "video": args.video.name, "frames": len(frames),
              "host": host_info() | {"providers": sorted({r["provider"] for r in bundled})},
              "bundled_yolov3_tiny": {"model": "bundled yolov3-tiny", "results": bundled}}

    torchvision_nms, skipped = (None, "--skip-ultralytics") if args.skip_ultralytics else prepare_ultralytics()
    versus = None
    if skipped:
        report["yolov8n_vs_ultralytics"] = {"skipped": skipped}
    else:
        import ultralytics

        model = yolov8n_onnx((args.cache_dir / "ultralytics") if args.cache_dir
                             else Path(tempfile.gettempdir()) / "edgefleet-bench-ultralytics")
        versus = [run for size in sizes for run in bench_vs_ultralytics(model, size, batch_sizes, frames,
                                                                        args.threads, args.rounds, args.block)]
        report["host"]["ultralytics"] = ultralytics.__version__
        report["yolov8n_vs_ultralytics"] = {"model": model.name, "torchvision_nms": torchvision_nms,
                                            "rounds": args.rounds, "block": args.block, "results": versus}
    report["summary"] = summary(bundled, versus)
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
