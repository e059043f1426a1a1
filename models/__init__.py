"""Detector backends, YOLO pre/post-processing, model formats and the bundled default model.

    from models import load_default_detector
    detector = load_default_detector()            # yolov3-tiny COCO on ONNX Runtime
    dets = detector.detect(frame_bgr)             # Detections, boxes in frame pixels
    dets[dets.confidence > 0.5].labels(detector.names)
"""
from __future__ import annotations

from pathlib import Path

from .base import Detector
from .detections import Detections
from .errors import ModelError

__all__ = ["Detections", "Detector", "ModelError", "load_default_detector"]


def load_default_detector(cache_dir: Path | None = None, **options) -> Detector:
    """The bundled COCO detector on ONNX Runtime (converted and cached on first use).

    `options` are the onnxruntime backend's config fields: input_size, confidence_threshold,
    iou_threshold, intra_op_threads, spin_wait, providers.
    """
    from .backends import create_detector
    from .bundled import default_model

    return create_detector({"type": "onnxruntime", "model": default_model(cache_dir), **options})
