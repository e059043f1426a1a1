"""ONNX Runtime backend: runs anywhere; picks the best execution provider this machine has.

Loads models made by `models.darknet` (metadata format "darknet-yolo"): class names, anchors,
masks and the default input size come from the file's metadata.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..base import DEFAULT_CONFIDENCE_THRESHOLD, DEFAULT_IOU_THRESHOLD, Detector
from ..darknet import FORMAT
from ..detections import Detections
from ..errors import BackendUnavailable, ModelError, ModelNotFound, UnsupportedModel
from ..yolo import decode_darknet, letterbox_batch, nms, scale_boxes_to_source

logger = logging.getLogger(__name__)

BACKEND_KEY = "onnxruntime"
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["onnxruntime"] = BACKEND_KEY
    model: Path
    input_size: tuple[int, int] | None = None
    """(width, height), multiples of 32; None: the size stored in the model (416x416).
    Larger finds smaller objects and costs time roughly in proportion to the pixels."""
    confidence_threshold: float = Field(DEFAULT_CONFIDENCE_THRESHOLD, ge=0.0, le=1.0)
    iou_threshold: float = Field(DEFAULT_IOU_THRESHOLD, ge=0.0, le=1.0)
    intra_op_threads: int | None = Field(None, ge=1)
    """Threads for one inference; None: onnxruntime's default (one per physical core).
    Set it when several detectors share a machine so they do not oversubscribe it."""
    providers: list[str] | None = None
    """Execution providers in order of preference; None: TensorRT, CUDA, CPU, of those present."""

    @field_validator("input_size")
    @classmethod
    def _multiple_of_32(cls, value):
        if value is not None and any(v <= 0 or v % 32 for v in value):
            raise ValueError(f"input_size must be positive multiples of 32, got {value}")
        return value


def choose_providers(requested: list[str] | None, available: list[str]) -> list[str]:
    """The providers to ask for: `requested` (all must exist), else the preferred ones present."""
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise BackendUnavailable(
                f"execution provider(s) {missing} not available; this onnxruntime has {available}")
        return list(requested)
    return [p for p in PREFERRED_PROVIDERS if p in available] or list(available)


class OnnxRuntimeDetector(Detector):
    def __init__(self, config: OnnxRuntimeConfig):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise BackendUnavailable("backend 'onnxruntime' needs the onnxruntime package installed") from err
        if not config.model.is_file():
            raise ModelNotFound(f"model {config.model} does not exist")
        options = ort.SessionOptions()
        if config.intra_op_threads:
            options.intra_op_num_threads = config.intra_op_threads
        providers = choose_providers(config.providers, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(config.model), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own untyped errors for bad files
            raise UnsupportedModel(f"onnxruntime cannot load {config.model}: {err}") from err
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("format") != FORMAT:
            raise UnsupportedModel(f"{config.model}: model format {meta.get('format')!r} is not supported "
                                   f"(expected {FORMAT!r}, from models.darknet)")
        self.names = json.loads(meta["names"])
        self.anchors = np.asarray(json.loads(meta["anchors"]), dtype=np.float32)
        self.masks = json.loads(meta["masks"])
        default_size = (int(meta["input_width"]), int(meta["input_height"]))
        self.input_size = tuple(config.input_size or default_size)
        self.confidence_threshold = config.confidence_threshold
        self.iou_threshold = config.iou_threshold
        self.input_name = self.session.get_inputs()[0].name
        self.providers = self.session.get_providers()
        self.model_path = config.model
        self.last_inference_ms = 0.0
        self._warmup()
        logger.info("onnxruntime: %s at %dx%d on %s (warm-up %.1f ms)", config.model.name, *self.input_size,
                    self.providers[0], self.last_inference_ms)

    def _warmup(self, runs: int = 2) -> None:
        frame = np.full((self.input_size[1], self.input_size[0], 3), 114, dtype=np.uint8)
        for _ in range(runs):
            self.detect(frame)

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Raw session run on a prepared (N, 3, H, W) tensor; sets `last_inference_ms`."""
        if self.session is None:
            raise ModelError("this detector is closed")
        start = time.perf_counter()
        outputs = self.session.run(None, {self.input_name: batch})
        self.last_inference_ms = (time.perf_counter() - start) * 1000.0
        return outputs

    def detect_batch(self, frames: list[np.ndarray]) -> list[Detections]:
        if not frames:
            return []
        batch, infos = letterbox_batch(frames, self.input_size)
        outputs = self.infer(batch)
        candidates = decode_darknet(outputs, self.anchors, self.masks, self.input_size,
                                    self.confidence_threshold)
        results = []
        for frame, info, (xyxy, score, class_id) in zip(frames, infos, candidates):
            keep = nms(xyxy, score, class_id, self.iou_threshold)
            results.append(Detections(scale_boxes_to_source(xyxy[keep], info, frame.shape),
                                      score[keep], class_id[keep]))
        return results

    def close(self) -> None:
        self.session = None


Config = OnnxRuntimeConfig
DetectorClass = OnnxRuntimeDetector
