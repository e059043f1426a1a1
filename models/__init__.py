"""Detector backends, YOLO pre/post-processing, model formats and the bundled default model.

    from edgefleet.models import load_default_detector, load_detector
    detector = load_default_detector()            # yolov3-tiny COCO on ONNX Runtime
    detector = load_detector("yolov8n-int8.engine")   # the backend follows the file type
    dets = detector.detect(frame_bgr)             # Detections, boxes in frame pixels
    dets[dets.confidence > 0.5].labels(detector.names)
"""
from __future__ import annotations

from pathlib import Path

from .base import Detector
from .detections import Detections
from .errors import ModelError

__all__ = ["Detections", "Detector", "ModelError", "load_default_detector", "load_detector"]

BACKEND_BY_SUFFIX = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt", ".trt": "tensorrt",
                     ".pt": "ultralytics", ".xml": "openvino", ".param": "ncnn"}


def load_default_detector(cache_dir: Path | None = None, **options) -> Detector:
    """The bundled COCO detector on ONNX Runtime (converted and cached on first use).

    `options` are the onnxruntime backend's config fields: input_size, confidence_threshold,
    iou_threshold, intra_op_threads, spin_wait, providers.
    """
    from .backends import create_detector
    from .bundled import default_model

    return create_detector({"type": "onnxruntime", "model": default_model(cache_dir), **options})


def load_detector(path: str | Path, **options) -> Detector:
    """A detector for a model file, on the backend its type calls for.

    .onnx: onnxruntime; .engine/.plan/.trt: tensorrt (its manifest must sit beside it);
    .pt: ultralytics (the train extra); .xml: openvino (an IR, its .bin beside it); .param: ncnn (its
    .bin and .ncnn.json beside it; the cpu extra for both). `options` are that backend's config fields. A file
    with a manifest is checked against it before it loads.
    """
    from .backends import create_detector
    from .errors import UnsupportedModel

    path = Path(path)
    backend = BACKEND_BY_SUFFIX.get(path.suffix.lower())
    if backend is None:
        raise UnsupportedModel(f"{path}: no backend runs {path.suffix or 'extensionless'} files "
                               f"(known: {', '.join(BACKEND_BY_SUFFIX)})")
    return create_detector({"type": backend, "model": path, **options})
