"""Ultralytics backend: runs a `.pt` checkpoint (or any file Ultralytics can load) with its own predict.

Pre-processing, NMS and the mapping back to source pixels are Ultralytics'; the result is our
`Detections`. Frames are letterboxed to the full `input_size` (Ultralytics' `rect=False`), as
the other backends do, so the same model gives the same boxes here and on ONNX Runtime.

The package is imported in the constructor only, offline, with its requirement auto-update
forced off (`import_ultralytics`): a missing requirement is an error, never a `pip install`.

torchvision fallback. Ultralytics' predict imports torchvision and calls `torchvision.ops.nms`.
When torchvision's C++ ops cannot load (a torchvision wheel built for another torch, e.g. a
CUDA torchvision beside a CPU-only torch: `_C.so` fails to link), `import torchvision` itself
fails on its fake registration of `torchvision::nms`, and predict with it.
`install_torchvision_nms_fallback` then, and only then, defines the `torchvision::nms` operator
with `torch.library` (implemented by `torch_nms` below, greedy NMS in plain torch) and routes
`torchvision.ops.nms` to that operator (torchvision's wrapper refuses to call any op while its
`_C` is missing). It says so in a WARNING. Every other torchvision C++ op stays unavailable.
With a working torchvision nothing is touched. The same operator lets an `nms=True` ONNX export
trace (torchvision's ONNX symbolic for `torchvision::nms` turns it into NonMaxSuppression).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import threading
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..base import DEFAULT_CONFIDENCE_THRESHOLD, DEFAULT_IOU_THRESHOLD, Detector
from ..detections import Detections
from ..errors import BackendUnavailable, InvalidConfig, ModelError, ModelNotFound, UnsupportedModel

logger = logging.getLogger(__name__)

BACKEND_KEY = "ultralytics"
INSTALL_HINT = "pip install 'edgefleet[train]'"
DEFAULT_MAX_DETECTIONS = 300  # Ultralytics' max_det


class UltralyticsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["ultralytics"] = BACKEND_KEY
    model: Path
    """A `.pt` checkpoint, or an exported file Ultralytics can run (.onnx, .torchscript, ...)."""
    input_size: tuple[int, int] | None = None
    """(width, height), multiples of 32; None: the model's own (its export size, its training
    size, else 640x640). Larger finds smaller objects and costs time roughly with the pixels."""
    confidence_threshold: float = Field(DEFAULT_CONFIDENCE_THRESHOLD, ge=0.0, le=1.0)
    iou_threshold: float = Field(DEFAULT_IOU_THRESHOLD, ge=0.0, le=1.0)
    max_detections: int = Field(DEFAULT_MAX_DETECTIONS, ge=1)
    """Boxes kept per frame after NMS, best first. Lower caps the work downstream on crowded frames."""
    device: str | None = None
    """torch device ("cpu", "cuda:0", "0"); None: Ultralytics' choice (the first GPU, else the CPU)."""

    @field_validator("input_size")
    @classmethod
    def _multiple_of_32(cls, value):
        if value is not None and any(v <= 0 or v % 32 for v in value):
            raise ValueError(f"input_size must be positive multiples of 32, got {value}")
        return value


# ---- torchvision NMS fallback ----

def torch_nms(boxes, scores, iou_threshold: float):
    """Greedy NMS in plain torch with `torchvision.ops.nms` semantics.

    boxes (n, 4) xyxy, scores (n,): returns int64 indices of the kept boxes, best score first.
    A box is dropped when its IoU with a better-scoring kept box is above `iou_threshold`
    (0/0 IoU of empty boxes counts as no overlap, as in torchvision). One vectorized step per
    kept box, like `models.yolo.nms`; class-aware callers offset boxes per class, as Ultralytics does.
    """
    import torch

    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = torch.argsort(scores, descending=True, stable=True)
    keep = []
    while order.numel():
        best, rest = order[0], order[1:]
        keep.append(best)
        inter = ((torch.minimum(x2[best], x2[rest]) - torch.maximum(x1[best], x1[rest])).clamp(min=0)
                 * (torch.minimum(y2[best], y2[rest]) - torch.maximum(y1[best], y1[rest])).clamp(min=0))
        iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[~(iou > iou_threshold)]
    return torch.stack(keep)


_FALLBACK_LOCK = threading.Lock()
_fallback_library = None  # the torch.library.Library holding our definitions; alive for the process


def _op_exists(name: str) -> bool:
    import torch

    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _define_fallback_ops() -> None:
    """Define torchvision::nms (our `torch_nms`) and torchvision::qnms (schema only), once."""
    global _fallback_library
    import torch

    if _fallback_library is not None or _op_exists("nms"):
        return
    library = torch.library.Library("torchvision", "FRAGMENT")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.impl("nms", torch_nms, "CompositeExplicitAutograd")
    if not _op_exists("qnms"):  # torchvision registers a fake kernel for it at import; no fallback kernel
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _fallback_library = library


def _nms_through_registered_op(boxes, scores, iou_threshold: float):
    """`torchvision.ops.nms` without its `_assert_has_ops` gate: calls the torchvision::nms operator."""
    import torch

    return torch.ops.torchvision.nms(boxes, scores, float(iou_threshold))


def install_torchvision_nms_fallback() -> str:
    """Make `torchvision.ops.nms` work; returns "torchvision" (its own op, untouched) or "fallback".

    Idempotent and thread-safe. Raises `BackendUnavailable` when torchvision is not installed
    or fails to import for another reason than its missing C++ ops.
    """
    with _FALLBACK_LOCK:
        if importlib.util.find_spec("torchvision") is None:
            raise BackendUnavailable(f"backend 'ultralytics' needs torchvision installed; run: {INSTALL_HINT}")
        import torch  # noqa: F401 - torchvision needs torch imported first

        try:
            import torchvision
        except RuntimeError as err:
            if "torchvision::nms" not in str(err):
                raise BackendUnavailable(f"torchvision cannot be imported: {err}") from err
            _define_fallback_ops()  # its import registers fake kernels for these two operators
            import torchvision
        if torchvision.extension._has_ops():
            return "torchvision"
        _define_fallback_ops()
        if torchvision.ops.nms is not _nms_through_registered_op:
            torchvision.ops.nms = torchvision.ops.boxes.nms = _nms_through_registered_op
            logger.warning("torchvision %s has no C++ ops here (its build does not match torch %s); "
                           "torchvision.ops.nms now runs models.backends.ultralytics.torch_nms",
                           torchvision.__version__, torch.__version__)
        return "fallback"


def import_ultralytics():
    """Import Ultralytics for inference or export: offline, auto-install off, NMS usable; returns `YOLO`.

    YOLO_OFFLINE=1 (no DNS probes, no usage events) and YOLO_AUTOINSTALL=false are set unless
    the environment already says otherwise; auto-install is then forced off in any case.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    try:
        from ultralytics import YOLO
        from ultralytics.utils import checks
    except ImportError as err:
        raise BackendUnavailable(f"backend 'ultralytics' needs the ultralytics package; run: {INSTALL_HINT}") from err
    checks.AUTOINSTALL = False  # read once at its import; a process may have imported it before us
    install_torchvision_nms_fallback()
    return YOLO


# ---- the detector ----

class UltralyticsDetector(Detector):
    def __init__(self, config: UltralyticsConfig):
        if not config.model.is_file():
            raise ModelNotFound(f"model {config.model} does not exist")
        yolo = import_ultralytics()
        try:
            self.model = yolo(str(config.model), task="detect")
        except Exception as err:  # Ultralytics raises many untyped errors for files it cannot load
            raise UnsupportedModel(f"ultralytics cannot load {config.model}: {err}") from err
        if self.model.task != "detect":
            raise UnsupportedModel(f"{config.model}: task {self.model.task!r} is not supported, only 'detect'")
        self.confidence_threshold = config.confidence_threshold
        self.iou_threshold = config.iou_threshold
        self.max_detections = config.max_detections
        self.device = config.device
        self.model_path = config.model
        self.last_inference_ms = 0.0
        self.input_size = config.input_size or (640, 640)
        self._warmup(config.input_size)
        names = self.model.names
        self.names = [str(names[i]) for i in range(len(names))]
        logger.info("ultralytics: %s at %dx%d on %s (warm-up %.1f ms)", config.model.name, *self.input_size,
                    self.model.predictor.device, self.last_inference_ms)

    def _warmup(self, requested: tuple[int, int] | None, runs: int = 2) -> None:
        """Run a gray frame, then settle `input_size` on the size Ultralytics really uses.

        Exports with a fixed shape force their own size; a dynamic export or a checkpoint
        without one runs at the requested size, else at the size stored in the model.
        """
        self._predict([np.full((self.input_size[1], self.input_size[0], 3), 114, np.uint8)],
                      None if requested is None else requested)
        predictor = self.model.predictor
        used = tuple(int(v) for v in predictor.imgsz)  # (height, width), after Ultralytics' checks
        stored = getattr(predictor.model, "imgsz", None) or self.model.overrides.get("imgsz")
        if requested is None and stored is not None:
            used = (stored, stored) if isinstance(stored, int) else tuple(int(v) for v in stored)
        self.input_size = (used[1], used[0])
        if requested is not None and tuple(requested) != self.input_size:
            raise InvalidConfig(f"input_size {tuple(requested)} does not fit {self.model_path}: "
                                f"it runs at {self.input_size} only (width, height)")
        for _ in range(runs):
            self.detect(np.full((self.input_size[1], self.input_size[0], 3), 114, np.uint8))

    def _predict(self, frames: list[np.ndarray], size: tuple[int, int] | None):
        if self.model is None:
            raise ModelError("this detector is closed")
        size_arg = {} if size is None else {"imgsz": (size[1], size[0])}  # Ultralytics' (height, width)
        return self.model.predict(
            frames, conf=self.confidence_threshold, iou=self.iou_threshold, max_det=self.max_detections,
            device=self.device, batch=len(frames), rect=False, verbose=False, save=False, **size_arg)

    def detect_batch(self, frames: list[np.ndarray]) -> list[Detections]:
        if not frames:
            return []
        results = self._predict(list(frames), self.input_size)
        self.last_inference_ms = float(sum(r.speed["inference"] for r in results))  # speed is per image
        out = []
        for result in results:
            boxes = result.boxes
            out.append(Detections(boxes.xyxy.cpu().numpy(), boxes.conf.cpu().numpy(),
                                  boxes.cls.cpu().numpy().astype(np.int32)))
        return out

    def close(self) -> None:
        self.model = None


Config = UltralyticsConfig
DetectorClass = UltralyticsDetector
