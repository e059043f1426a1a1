"""Ultralytics backend: runs a `.pt` checkpoint (or any file Ultralytics can load) with its own predict.

Pre-processing, NMS and the mapping back to source pixels are Ultralytics'; the result is our
`Detections`. Frames are letterboxed to the full `input_size` (Ultralytics' `rect=False`), as
the other backends do, so the same model gives the same boxes here and on ONNX Runtime.

The package is imported in the constructor only, offline, with its requirement auto-update
forced off (`import_ultralytics`): a missing requirement is an error, never a `pip install`.

torchvision. Ultralytics' predict imports torchvision and calls `torchvision.ops.nms` (its
exporter traces `torchvision::nms` for `nms=True` graphs). `import_ultralytics` checks that this
works (`check_torchvision_nms`) and otherwise fails with `BackendUnavailable`: a torchvision
wheel built for another torch (a CUDA torchvision beside a CPU-only torch) cannot load its C++
ops, and the fix is the torchvision built for the installed torch. Nothing is patched here; the
test suite and benchmarks bring their own stand-in for such an environment (tests/torchvision_nms.py).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
from pathlib import Path
from typing import Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..base import DEFAULT_CONFIDENCE_THRESHOLD, DEFAULT_IOU_THRESHOLD, Detector, InputSize
from ..detections import Detections
from ..errors import BackendUnavailable, InvalidConfig, ModelError, ModelNotFound, UnsupportedModel
from ..yolo import PAD_VALUE

logger = logging.getLogger(__name__)

BACKEND_KEY: Final = "ultralytics"
INSTALL_HINT = "pip install 'edgefleet[train]'"
DEFAULT_MAX_DETECTIONS = 300  # Ultralytics' max_det


class UltralyticsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["ultralytics"] = BACKEND_KEY
    model: Path
    """A `.pt` checkpoint, or an exported file Ultralytics can run (.onnx, .torchscript, ...)."""
    input_size: InputSize | None = None
    """(width, height), multiples of 32; None: the model's own (its export size, its training
    size, else 640x640). Larger finds smaller objects and costs time roughly with the pixels."""
    confidence_threshold: float = Field(DEFAULT_CONFIDENCE_THRESHOLD, ge=0.0, le=1.0)
    iou_threshold: float = Field(DEFAULT_IOU_THRESHOLD, ge=0.0, le=1.0)
    max_detections: int = Field(DEFAULT_MAX_DETECTIONS, ge=1)
    """Boxes kept per frame after NMS, best first. Lower caps the work downstream on crowded frames."""
    device: str | None = None
    """torch device ("cpu", "cuda:0", "0"); None: Ultralytics' choice (the first GPU, else the CPU)."""


# ---- torchvision ----

def _torchvision_fix(torch_version: str) -> str:
    """The pip command that installs the torchvision built for `torch_version`, from PyTorch's index.

    The index is the torch build's tag (+cpu, +cu128). The installed torchvision's release is
    kept when it requires this very torch release (then only its build is wrong).
    """
    release, _, build = torch_version.partition("+")
    if not build:
        return "reinstall torchvision from the same index as torch"
    index = f"https://download.pytorch.org/whl/{build}"
    try:
        requires = [r.replace(" ", "").replace("(", "").replace(")", "")  # "torch (==2.13.0)" or "torch==2.13.0"
                    for r in importlib.metadata.requires("torchvision") or []]
        if f"torch=={release}" in requires:  # the right release, the wrong build
            return (f"pip install --force-reinstall --no-deps torchvision=={importlib.metadata.version('torchvision')}"
                    f" --index-url {index}")
    except importlib.metadata.PackageNotFoundError:
        pass
    return f"pip install the torchvision release made for torch {release} with --index-url {index}"


def check_torchvision_nms() -> None:
    """Raise `BackendUnavailable` unless torchvision imports and `torchvision.ops.nms` runs.

    Runs one NMS on a single box: true for torchvision's own op, and for any `torchvision::nms`
    operator that something registered and routed `torchvision.ops.nms` to beforehand.
    """
    if importlib.util.find_spec("torchvision") is None:
        raise BackendUnavailable(f"backend 'ultralytics' needs torchvision installed; run: {INSTALL_HINT}")
    import torch  # torchvision needs torch imported first

    try:
        import torchvision

        torchvision.ops.nms(torch.zeros((1, 4)), torch.ones(1), 0.5)
    except (RuntimeError, ImportError, OSError) as err:
        try:
            version = importlib.metadata.version("torchvision")
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        raise BackendUnavailable(
            f"backend 'ultralytics' needs torchvision.ops.nms, but torchvision {version}'s C++ ops do not load "
            f"with torch {torch.__version__} ({reason}): this torchvision was built for another torch. "
            f"Install the torchvision built for this torch, from the same index as torch: "
            f"{_torchvision_fix(torch.__version__)}") from err


def import_ultralytics(needs_nms: bool = True):
    """Import Ultralytics for inference or export: offline, auto-install off, NMS checked; returns `YOLO`.

    YOLO_OFFLINE=1 (no DNS probes, no usage events) and YOLO_AUTOINSTALL=false are set unless
    the environment already says otherwise; auto-install is then forced off in any case.
    Raises `BackendUnavailable` when ultralytics is missing or, with `needs_nms` (predict, and
    exports with NMS in the graph), when torchvision's NMS does not run (`check_torchvision_nms`).
    A plain export traces the model alone and needs no torchvision op.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    try:
        from ultralytics import YOLO
        from ultralytics.utils import checks
    except ImportError as err:
        raise BackendUnavailable(f"backend 'ultralytics' needs the ultralytics package; run: {INSTALL_HINT}") from err
    checks.AUTOINSTALL = False  # read once at its import; a process may have imported it before us
    if needs_nms:
        check_torchvision_nms()
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
        self._settle_input_size(config.input_size)
        self.warm_up()
        names = self.model.names
        self.names = [str(names[i]) for i in range(len(names))]
        logger.info("ultralytics: %s at %dx%d on %s (warm-up %.1f ms)", config.model.name, *self.input_size,
                    self.model.predictor.device, self.last_inference_ms)

    def _settle_input_size(self, requested: tuple[int, int] | None) -> None:
        """Run a gray frame, then settle `input_size` on the size Ultralytics really uses.

        Exports with a fixed shape force their own size; a dynamic export or a checkpoint
        without one runs at the requested size, else at the size stored in the model.
        """
        self._predict([np.full((self.input_size[1], self.input_size[0], 3), PAD_VALUE, np.uint8)],
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
