#!/usr/bin/env python3
"""Our ONNX Runtime detector against Ultralytics' predict, on the same exported ONNX file and frames.

    python scripts/bench/detector_vs_ultralytics.py [--model FILE.onnx | --pt FILE.pt] [--frames 60]
        [--sizes 320,416,640] [--batch-sizes 1,4] [--threads N] [--cache-dir DIR] [--out FILE]

Per square input size, on the first --frames frames of vtest.avi:
- `raw_ms`: ONNX Runtime's session.run alone on tensors letterboxed beforehand (our session);
- `ours_ms`: our detect_batch() (letterbox + inference + decode + NMS + source pixels);
- `ultralytics_ms`: YOLO(file).predict() on the same ONNX file, batch 1 (its own letterbox,
  inference, NMS and scaling), with rect=False so it letterboxes to the same full size;
  `ultralytics_speed_ms` is its own per-stage account (preprocess, inference, postprocess).
All per call, p50/p95. The measurements are interleaved in blocks: each of --rounds rounds runs
a block of --block calls of every measurement, in an order that rotates from round to round,
so machine drift lands on all of them alike. Not call by call: two ONNX Runtime sessions (ours
and Ultralytics') alternating call by call make each other's spinning worker threads compete
for the cores (measured on 2 cores: session.run 14.6 ms in a block, 44 ms right after a
predict), which would measure that contention instead of the detectors; the first 2 calls of
every block are run but not counted, for the same reason.
`overhead_ratio` = ours / raw - 1 (p50s); `speed_ratio` = ultralytics / ours per frame (p50s;
above 1: ours is faster). Both sessions use ONNX Runtime's default threads unless --threads
(which only ours honours: Ultralytics' predict does not expose session options).

Without --model, yolov8n.yaml is built with `models.export.build_untrained` (seed 0, COCO names,
about 0.4% of anchors above 0.25: tens of boxes a frame at 640) and exported (dynamic, raw head)
into --cache-dir, once. No weights are downloaded: there are none to download here.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from detector import default_video, host_info, percentiles, read_frames  # noqa: E402  (scripts/bench/detector.py)

from models.backends import create_detector  # noqa: E402
from models.yolo import letterbox_batch  # noqa: E402

CONFIDENCE, IOU = 0.25, 0.45


def prepare_model(args) -> Path:
    """The ONNX file to run: --model, else --pt (or yolov8n.yaml, built) exported into the cache."""
    from models.export import build_untrained, export_ultralytics

    if args.model:
        return args.model
    cache = args.cache_dir or Path(tempfile.gettempdir()) / "edgefleet-bench-ultralytics"
    cache.mkdir(parents=True, exist_ok=True)
    pt = args.pt
    if pt is None:
        pt = cache / "yolov8n-untrained.pt"
        if not pt.is_file():
            from ultralytics.utils import ROOT as UL_ROOT
            from ultralytics.utils import YAML

            names = [str(n) for n in YAML.load(UL_ROOT / "cfg" / "datasets" / "coco.yaml")["names"].values()]
            build_untrained("yolov8n.yaml", pt, seed=0, names=names, passing_fraction=0.004)
    onnx = cache / f"{pt.stem}.onnx"
    return onnx if onnx.is_file() else export_ultralytics(pt, cache, imgsz=640, dynamic=True)


def bench_size(model: Path, size: int, batch_sizes: list[int], frames: list[np.ndarray], threads: int | None,
               rounds: int, block: int, settle: int = 2) -> list[dict]:
    """All measurements at one input size, interleaved in blocks (see the module docstring)."""
    from ultralytics import YOLO

    ours = create_detector({"type": "onnxruntime", "model": model, "input_size": (size, size),
                            "confidence_threshold": CONFIDENCE, "iou_threshold": IOU, "intra_op_threads": threads})
    theirs = YOLO(str(model), task="detect")
    last_speed, stages = [{}], []  # Ultralytics' own per-stage times: of the last call, of the counted calls

    def predict(group):
        result = theirs.predict(group[0], imgsz=size, conf=CONFIDENCE, iou=IOU, rect=False, verbose=False)[0]
        last_speed[0] = result.speed
        return [result.boxes]

    steps = []  # (name, batch, call(call number) -> per-frame results, or None for raw runs)
    for batch in batch_sizes:
        groups = [[frames[(i * batch + j) % len(frames)] for j in range(batch)]
                  for i in range(max(1, len(frames) // batch))]
        tensors = [letterbox_batch(group, ours.input_size)[0] for group in groups]
        steps.append(("raw", batch, lambda i, t=tensors: ours.infer(t[i % len(t)]) and None))
        steps.append(("ours", batch, lambda i, g=groups: ours.detect_batch(g[i % len(g)])))
        if batch == 1:
            steps.append(("ultralytics", 1, lambda i, g=groups: predict(g[i % len(g)])))
    samples = {(name, batch): [] for name, batch, _ in steps}
    found = dict.fromkeys(samples, 0)
    position = dict.fromkeys(samples, 0)
    for round_ in range(rounds):
        for name, batch, call in steps[round_ % len(steps):] + steps[:round_ % len(steps)]:  # rotate who goes first
            key = (name, batch)
            for k in range(settle + block):
                start = time.perf_counter()
                results = call(position[key])
                elapsed = (time.perf_counter() - start) * 1000.0
                position[key] += 1
                if k >= settle:  # the first calls of a block still meet the other runtime's spinning threads
                    samples[key].append(elapsed)
                    found[key] += sum(len(result) for result in results or [])
                    if name == "ultralytics":
                        stages.append(last_speed[0])
    runs = []
    for batch in batch_sizes:
        raw, mine = samples[("raw", batch)], samples[("ours", batch)]
        entry = {
            "input_size": [size, size], "batch": batch, "calls": len(mine), "threads": threads,
            "provider": ours.providers[0], "raw_ms": percentiles(raw), "ours_ms": percentiles(mine),
            "overhead_ratio": round(float(np.median(mine) / np.median(raw) - 1.0), 4),
            "ours_ms_per_frame_p50": round(float(np.median(mine)) / batch, 2),
            "ours_detections_per_frame": round(found[("ours", batch)] / (len(mine) * batch), 2),
        }
        if batch == 1:
            their = samples[("ultralytics", 1)]
            entry |= {
                "ultralytics_ms": percentiles(their),
                "ultralytics_speed_ms": {k: round(float(np.median([s[k] for s in stages])), 2)
                                         for k in ("preprocess", "inference", "postprocess")},
                "ultralytics_detections_per_frame": round(found[("ultralytics", 1)] / len(their), 2),
            }
        runs.append(entry)
    # Ultralytics runs batch 1 only: its per-frame p50 against ours per frame at every batch size.
    their_p50 = float(np.median(samples[("ultralytics", 1)])) if ("ultralytics", 1) in samples else None
    for entry in runs:
        if their_p50 is not None:
            entry["speed_ratio"] = round(their_p50 / entry["ours_ms_per_frame_p50"], 3)
    ours.close()
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="an Ultralytics ONNX export (detect, raw head)")
    parser.add_argument("--pt", type=Path, default=None, help="a checkpoint to export first (default: yolov8n.yaml, "
                                                              "built untrained)")
    parser.add_argument("--video", type=Path, default=default_video())
    parser.add_argument("--frames", type=int, default=60, help="frames read from the start of the video")
    parser.add_argument("--sizes", default="320,416,640", help="square network inputs, multiples of 32")
    parser.add_argument("--batch-sizes", default="1,4", help="ours; Ultralytics' predict always runs batch 1")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads, ours only "
                                                                   "(default: its own choice, as Ultralytics')")
    parser.add_argument("--rounds", type=int, default=5, help="blocks of each measurement, interleaved")
    parser.add_argument("--block", type=int, default=10, help="calls measured per block (after 2 settling calls)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the built model and export are kept")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: stdout)")
    args = parser.parse_args()

    from models.backends.ultralytics import import_ultralytics

    import_ultralytics()  # offline, no auto-install, torchvision NMS usable
    import ultralytics

    model = prepare_model(args)
    frames = read_frames(args.video, args.frames)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    runs = [run for size in args.sizes.split(",") for run in bench_size(model, int(size), batch_sizes, frames,
                                                                       args.threads, args.rounds, args.block)]
    report = {"benchmark": "models detector vs ultralytics predict", "model": model.name, "video": args.video.name,
              "frames": len(frames), "host": host_info() | {"ultralytics": ultralytics.__version__},
              "results": runs}
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
