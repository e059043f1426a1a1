#!/usr/bin/env python3
"""Detector speed on vtest.avi: raw inference (session.run only) and the full detect() call.

    python scripts/bench/detector.py [--frames 100] [--batch-sizes 1,4] [--sizes 320,416,640]
                                     [--threads N] [--cache-dir DIR] [--out FILE]

For each batch size: `raw_inference_ms` times ONNX Runtime's session.run on tensors letterboxed
beforehand; `detect_ms` times detect_batch() (letterbox + inference + decode + NMS + mapping
back to source pixels); `letterbox_ms` and `decode_nms_ms` are the parts around inference.
All per call (one call = one batch) with p50/p95, plus per-frame p50 and frames/s.
Writes JSON to --out, or stdout. Also imported by scripts/bench/agent_vtest.py.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models import load_default_detector  # noqa: E402
from models.yolo import decode_darknet, letterbox_batch, nms  # noqa: E402


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


def bench(size: int, batch: int, frames: list[np.ndarray], threads: int | None = None,
          cache_dir: Path | None = None, warmup: int = 3) -> dict:
    """Time one batch size at a square input `size`; frames are cycled into batches."""
    detector = load_default_detector(cache_dir=cache_dir, input_size=(size, size), intra_op_threads=threads)
    groups = [[frames[(i * batch + j) % len(frames)] for j in range(batch)]
              for i in range(max(1, len(frames) // batch))]
    prepared = [letterbox_batch(group, detector.input_size)[0] for group in groups]
    for tensor in prepared[:warmup]:
        detector.infer(tensor)
    raw, pre, post, full, inner = [], [], [], [], []
    for tensor in prepared:
        outputs = detector.infer(tensor)
        raw.append(detector.last_inference_ms)
        start = time.perf_counter()
        candidates = decode_darknet(outputs, detector.anchors, detector.masks, detector.input_size,
                                    detector.confidence_threshold)
        for xyxy, score, class_id in candidates:
            nms(xyxy, score, class_id, detector.iou_threshold)
        post.append((time.perf_counter() - start) * 1000)
    for group in groups[:warmup]:
        detector.detect_batch(group)
    detections = 0
    for group in groups:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=default_video())
    parser.add_argument("--frames", type=int, default=100, help="frames read from the start of the video")
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--sizes", default="416", help="square network inputs, multiples of 32 (e.g. 320,416,640)")
    parser.add_argument("--threads", type=int, default=None,
                        help="onnxruntime intra-op threads (default: its own choice)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="converted-model cache (default: the one models.bundled uses)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: stdout)")
    args = parser.parse_args()
    frames = read_frames(args.video, args.frames)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    runs = [bench(int(size), batch, frames, args.threads, args.cache_dir)
            for size in args.sizes.split(",") for batch in batch_sizes]
    report = {"benchmark": "models detector", "video": args.video.name, "frames": len(frames),
              "host": host_info(), "results": runs}
    report["host"]["providers"] = sorted({r["provider"] for r in runs})
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
