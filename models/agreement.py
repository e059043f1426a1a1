"""How closely a candidate artifact (quantized, converted) detects what its FP32 ONNX source does.

Speed alone cannot choose an INT8 model: quantization moves boxes and scores, and can lose or
invent objects. Both detectors run on the same held frames (frames the calibration never saw)
and their boxes are matched per frame, one to one, same class, IoU >= 0.5, best IoU first
(`models.yolo.greedy_pairs`, the rule the shadow gate uses in agent/shadow.py):

- f1: 2 * matches / (reference boxes + candidate boxes); 1.0 when neither finds anything.
- mean_iou: mean IoU of the matched pairs (1.0 with no pairs: nothing to disagree on).
- score_shift: mean (candidate score - reference score) over the pairs: a calibration that
  lowers every score shows here before it shows in f1 (boxes drop under the threshold).
- score_shift_abs: mean |candidate score - reference score| over the pairs.

    agreement = score_agreement(fp32_detector, int8_detector, frames)
    agreement.f1, agreement.as_dict()
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .detections import Detections
from .yolo import box_iou, greedy_pairs

MATCH_IOU = 0.5


@dataclass(frozen=True)
class Agreement:
    """The match statistics of a candidate against its reference over some frames."""

    f1: float
    mean_iou: float
    score_shift: float
    score_shift_abs: float
    matches: int
    reference_boxes: int
    candidate_boxes: int
    frames: int

    def as_dict(self) -> dict[str, float]:
        """Rounded for a manifest (JSON numbers; counts as whole floats)."""
        return {"f1": round(self.f1, 4), "mean_iou": round(self.mean_iou, 4),
                "score_shift": round(self.score_shift, 4), "score_shift_abs": round(self.score_shift_abs, 4),
                "matches": float(self.matches), "reference_boxes": float(self.reference_boxes),
                "candidate_boxes": float(self.candidate_boxes), "frames": float(self.frames)}


def match_frame(reference: Detections, candidate: Detections,
                iou_threshold: float = MATCH_IOU) -> list[tuple[int, int, float]]:
    """(reference row, candidate row, IoU) of the one-to-one same-class matches, best IoU first."""
    if not len(reference) or not len(candidate):
        return []
    iou = box_iou(reference.xyxy, candidate.xyxy)
    # identical boxes match even at zero area (a box clipped flat at the frame's edge)
    iou[np.all(reference.xyxy[:, None, :] == candidate.xyxy[None, :, :], axis=2)] = 1.0
    iou = np.where(reference.class_id[:, None] == candidate.class_id[None, :], iou, 0.0)
    return [(i, j, float(iou[i, j])) for i, j in greedy_pairs(iou, iou_threshold)]


class AgreementCounter:
    """Adds up matches frame by frame; `result()` gives the `Agreement` so far."""

    def __init__(self, iou_threshold: float = MATCH_IOU):
        self.iou_threshold = iou_threshold
        self.frames = self.reference_boxes = self.candidate_boxes = 0
        self.ious: list[float] = []
        self.shifts: list[float] = []

    def add(self, reference: Detections, candidate: Detections) -> None:
        self.frames += 1
        self.reference_boxes += len(reference)
        self.candidate_boxes += len(candidate)
        for i, j, iou in match_frame(reference, candidate, self.iou_threshold):
            self.ious.append(iou)
            self.shifts.append(float(candidate.confidence[j]) - float(reference.confidence[i]))

    def result(self) -> Agreement:
        boxes = self.reference_boxes + self.candidate_boxes
        matches = len(self.ious)
        return Agreement(
            f1=2.0 * matches / boxes if boxes else 1.0,
            mean_iou=float(np.mean(self.ious)) if matches else 1.0,
            score_shift=float(np.mean(self.shifts)) if matches else 0.0,
            score_shift_abs=float(np.mean(np.abs(self.shifts))) if matches else 0.0,
            matches=matches, reference_boxes=self.reference_boxes, candidate_boxes=self.candidate_boxes,
            frames=self.frames)


def compare(pairs: Iterable[tuple[Detections, Detections]], iou_threshold: float = MATCH_IOU) -> Agreement:
    """The agreement over (reference, candidate) detections of the same frames."""
    counter = AgreementCounter(iou_threshold)
    for reference, candidate in pairs:
        counter.add(reference, candidate)
    return counter.result()


def score_agreement(reference, candidate, frames: Iterable[np.ndarray],
                    iou_threshold: float = MATCH_IOU) -> Agreement:
    """Run two detectors (anything with `detect(frame) -> Detections`) on each frame and compare."""
    return compare(((reference.detect(f), candidate.detect(f)) for f in frames), iou_threshold)


__all__ = ["MATCH_IOU", "Agreement", "AgreementCounter", "compare", "match_frame", "score_agreement"]
