"""ONNX Runtime backend: runs anywhere, picks the best execution provider present."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..base import Detector
from ..detections import Detections
from ..errors import BackendUnavailable, ModelNotFound, UnsupportedModel
from ..yolo import decode_darknet, letterbox, nms, scale_boxes_to_source

logger = logging.getLogger(__name__)

BACKEND_KEY = "onnxruntime"
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["onnxruntime"] = BACKEND_KEY
    model: Path
    input_size: tuple[int, int] | None = None
    """(width, height), multiples of 32; default: the size stored in the model."""
    confidence_threshold: float = Field(0.25, ge=0.0, le=1.0)
    iou_threshold: float = Field(0.45, ge=0.0, le=1.0)
    intra_op_threads: int | None = Field(None, ge=1)
    providers: list[str] | None = None
    """Execution providers in order of preference; default: the best available."""

    @field_validator("input_size")
    @classmethod
    def _multiple_of_32(cls, value):
        if value is not None and any(v <= 0 or v % 32 for v in value):
            raise ValueError(f"input_size must be positive multiples of 32, got {value}")
        return value


def choose_providers(requested: list[str] | None, available: list[str]) -> list[str]:
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise BackendUnavailable(f"execution provider(s) {missing} not available; this onnxruntime has {available}")
        return list(requested)
    return [p for p in PREFERRED_PROVIDERS if p in available] or list(available)


class OnnxRuntimeDetector(Detector):
    def __init__(self, config: OnnxRuntimeConfig):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise BackendUnavailable("backend 'onnxruntime' needs: pip install onnxruntime") from err
        if not config.model.exists():
            raise ModelNotFound(f"model {config.model} does not exist")
        options = ort.SessionOptions()
        if config.intra_op_threads:
            options.intra_op_num_threads = config.intra_op_threads
        providers = choose_providers(config.providers, ort.get_available_providers())
        self.session = ort.InferenceSession(str(config.model), options, providers=providers)
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("format") != "darknet-yolo":
            raise UnsupportedModel(f"{config.model}: model format {meta.get('format')!r} is not supported yet")
        self.names = json.loads(meta["names"])
        self.anchors = np.array(json.loads(meta["anchors"]), dtype=np.float32)
        self.masks = json.loads(meta["masks"])
        self.input_size = tuple(config.input_size or (int(meta["input_width"]), int(meta["input_height"])))
        self.confidence_threshold = config.confidence_threshold
        self.iou_threshold = config.iou_threshold
        self.input_name = self.session.get_inputs()[0].name
        self.providers = self.session.get_providers()
        self._warmup()
        logger.info("onnxruntime: %s at %dx%d on %s", config.model.name, *self.input_size, self.providers[0])

    def _warmup(self, runs: int = 2) -> None:
        frame = np.zeros((self.input_size[1], self.input_size[0], 3), dtype=np.uint8)
        for _ in range(runs):
            self.detect(frame)

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Raw session run on a prepared (N,3,H,W) tensor; sets `last_inference_ms`."""
        start = time.perf_counter()
        outputs = self.session.run(None, {self.input_name: batch})
        self.last_inference_ms = (time.perf_counter() - start) * 1000.0
        return outputs

    def detect_batch(self, frames: list[np.ndarray]) -> list[Detections]:
        if not frames:
            return []
        prepared = [letterbox(frame, self.input_size) for frame in frames]
        batch = np.concatenate([tensor for tensor, _ in prepared]) if len(prepared) > 1 else prepared[0][0]
        outputs = self.infer(batch)
        candidates = decode_darknet(outputs, self.anchors, self.masks, self.input_size, len(self.names),
                                    self.confidence_threshold)
        results = []
        for (xyxy, score, class_id), (_, info) in zip(candidates, prepared):
            keep = nms(xyxy, score, class_id, self.iou_threshold)
            results.append(Detections(scale_boxes_to_source(xyxy[keep], info), score[keep], class_id[keep]))
        return results

    def close(self) -> None:
        self.session = None


Config = OnnxRuntimeConfig
DetectorClass = OnnxRuntimeDetector
