"""The detector interface every backend implements."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator

from .detections import Detections
from .yolo import PAD_VALUE

DEFAULT_CONFIDENCE_THRESHOLD = 0.25
DEFAULT_IOU_THRESHOLD = 0.45


def _multiple_of_32(value: tuple[int, int]) -> tuple[int, int]:
    if any(v <= 0 or v % 32 for v in value):
        raise ValueError(f"input_size must be positive multiples of 32, got {value}")
    return value


InputSize = Annotated[tuple[int, int], AfterValidator(_multiple_of_32)]
"""A network input (width, height) in backend configs: YOLO strides need multiples of 32."""


@dataclass
class Prepared:
    """Frames made ready for one inference call by `Detector.prepare`."""

    detector: Detector
    """The detector that prepared them (the tensor fits its input size only)."""
    frames: list[np.ndarray]
    tensor: np.ndarray | None = None
    """The letterboxed input batch, for backends that stage their work; None for the others."""
    infos: list | None = None
    """Per frame, what maps boxes back to its pixels (models.yolo.letterbox's info)."""


class Detector(ABC):
    """Frames in (BGR uint8, any size), `Detections` out with boxes in source-frame pixels.

    Backends warm up in their constructor, so the first real frame is not the slow one.
    """

    names: list[str]
    """Class names, indexed by `Detections.class_id`."""
    input_size: tuple[int, int]
    """(width, height) of the network input; frames are letterboxed to it."""
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD
    """Minimum score (objectness x class probability) kept. Higher: fewer false positives,
    more missed objects, slightly faster post-processing."""
    iou_threshold: float = DEFAULT_IOU_THRESHOLD
    """Overlap above which NMS drops the weaker of two boxes of one class. Higher: more
    duplicate boxes survive; lower: people standing close together merge into one box."""
    last_inference_ms: float = 0.0
    """Duration of the last raw inference call (the runtime's run only, no pre/post-processing)."""

    def warm_up(self, runs: int = 2) -> None:
        """Detect on `runs` gray frames of `input_size`; a backend's constructor ends with it."""
        frame = np.full((self.input_size[1], self.input_size[0], 3), PAD_VALUE, dtype=np.uint8)
        for _ in range(runs):
            self.detect(frame)

    def detect(self, frame_bgr: np.ndarray) -> Detections:
        """One frame; boxes in the frame's own pixels."""
        return self.detect_batch([frame_bgr])[0]

    @abstractmethod
    def detect_batch(self, frames: list[np.ndarray]) -> list[Detections]:
        """Several frames (of any sizes) in one inference call; one `Detections` per frame."""

    # `detect_batch` in three stages, for pipelines (agent.runner): the next frames are prepared
    # on another thread while this one decodes the last call's outputs, when a core is free.
    # `finish(p, run_prepared(p))` with `p = prepare(frames)` equals `detect_batch(frames)`.

    def prepare(self, frames: list[np.ndarray]) -> Prepared:
        """Pre-processing (letterboxing), no runtime call; safe on any thread. The default
        prepares nothing and leaves the whole call to `run_prepared`."""
        return Prepared(self, frames)

    def run_prepared(self, prepared: Prepared) -> Any:
        """Inference on prepared frames (sets `last_inference_ms`); what `finish` takes."""
        return self.detect_batch(prepared.frames)

    def finish(self, prepared: Prepared, outputs: Any) -> list[Detections]:
        """Post-processing of `run_prepared`'s outputs: one `Detections` per frame."""
        return outputs

    def close(self) -> None:  # noqa: B027 - a default: a backend without resources has nothing to release
        """Release the backend's resources; the detector is unusable afterwards."""

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
