"""What the YOLO backends whose runtime takes a letterboxed batch share (ONNX Runtime, TensorRT).

A `LetterboxDetector` letterboxes frames into one NCHW float32 tensor (`prepare`, any thread),
hands it to its runtime (`run_prepared`: `infer`, in chunks of `max_batch` frames, through the
backend's one method `_run`), decodes the raw outputs for the model's head, runs NMS where the
head needs it and maps the boxes back to each frame's pixels (`finish`). A backend sets its
attributes (names, input_size, thresholds, `max_batch`, `pad_batch`, `rect`), picks its head's
decoder with `head_decoder`, implements `_run` and warms up at the end of its constructor.
"""
from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable

import numpy as np

from .base import Detector, Prepared
from .detections import Detections
from .errors import UnsupportedModel
from .yolo import (
    decode_darknet,
    decode_end2end,
    decode_ultralytics,
    letterbox_batch,
    nms,
    rect_size,
    scale_boxes_to_source,
)

Candidates = list[tuple[np.ndarray, np.ndarray, np.ndarray]]
"""Per image: (xyxy in network-input pixels, score, class_id)."""
Decoder = Callable[[list[np.ndarray], tuple[int, int], float], Candidates]
"""(raw outputs, network input (width, height), confidence threshold) -> candidates."""

HEADS = ("darknet", "ultralytics", "end2end")


def head_decoder(head: str, anchors: np.ndarray | None = None,
                 masks: list[list[int]] | None = None) -> tuple[Decoder, bool]:
    """(decoder, whether NMS follows it) for a head layout, with models.yolo's decoders.

    "darknet": one raw tensor per [yolo] head, needs `anchors` and `masks`; "ultralytics": one
    (N, 4 + nc, anchors) output; "end2end": one (N, K, 6) output whose graph chose its boxes (no NMS).
    """
    if head == "darknet":
        if anchors is None or masks is None:
            raise UnsupportedModel("a darknet head needs its anchors and masks")
        anchor_array, head_masks = anchors, masks
        return (lambda outputs, size, thr: decode_darknet(outputs, anchor_array, head_masks, size, thr)), True
    if head == "ultralytics":
        return (lambda outputs, size, thr: decode_ultralytics(outputs[0], size, thr)), True
    if head == "end2end":
        return (lambda outputs, size, thr: decode_end2end(outputs[0], thr)), False
    raise UnsupportedModel(f"head layout {head!r} is not one of {HEADS}")


class LetterboxDetector(Detector):
    """A detector whose runtime maps a letterboxed (N, 3, H, W) float32 batch to raw head outputs."""

    max_batch: int | None = None
    """Frames one runtime call takes at most; a larger batch runs in chunks. None: any number."""
    pad_batch: bool = False
    """The runtime's batch dimension is fixed at `max_batch`: a shorter chunk is padded with zeros."""
    rect: bool = False
    """Letterbox each batch into the smallest rectangle that holds it (models.yolo.rect_size), not
    all of `input_size`; for runtimes that take any input size."""
    _decoder: Decoder
    _nms_after: bool

    def use_head(self, decoder: Decoder, nms_after: bool) -> None:
        """Decode the runtime's outputs with `decoder` (see `head_decoder`), then NMS if `nms_after`."""
        self._decoder, self._nms_after = decoder, nms_after

    @abstractmethod
    def _run(self, tensor: np.ndarray) -> list[np.ndarray]:
        """One runtime call on at most `max_batch` frames (exactly that many with `pad_batch`): its
        raw outputs, batch first, on the host. Raises ModelError once the detector is closed."""

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Raw runtime call(s) on a prepared (N, 3, H, W) tensor; sets `last_inference_ms`.

        One call, unless the runtime takes at most `max_batch` frames a call: then one call per
        chunk (the last padded with `pad_batch`), outputs concatenated.
        """
        limit = self.max_batch
        start = time.perf_counter()
        if limit is None or len(batch) == limit:
            outputs = self._run(batch)
        else:
            parts = []
            for first in range(0, len(batch), limit):
                chunk = batch[first:first + limit]
                n = len(chunk)
                if self.pad_batch and n < limit:
                    chunk = np.concatenate([chunk, np.zeros((limit - n, *chunk.shape[1:]), chunk.dtype)])
                parts.append([out[:n] for out in self._run(chunk)])
            outputs = [np.concatenate(heads) for heads in zip(*parts)]
        self.last_inference_ms = (time.perf_counter() - start) * 1000.0
        return outputs

    def decode(self, outputs: list[np.ndarray], size: tuple[int, int] | None = None) -> Candidates:
        """Raw outputs -> per image (xyxy in input pixels, score, class_id), NMS included where the
        head needs it. `size`: the (width, height) the network ran at (default: `input_size`)."""
        candidates = self._decoder(outputs, size or self.input_size, self.confidence_threshold)
        if not self._nms_after:
            return candidates
        results = []
        for xyxy, score, class_id in candidates:
            keep = nms(xyxy, score, class_id, self.iou_threshold)
            results.append((xyxy[keep], score[keep], class_id[keep]))
        return results

    def detect_batch(self, frames: list[np.ndarray]) -> list[Detections]:
        if not frames:
            return []
        prepared = self.prepare(frames)
        return self.finish(prepared, self.run_prepared(prepared))

    def prepare(self, frames: list[np.ndarray]) -> Prepared:
        size = rect_size(frames, self.input_size) if self.rect else self.input_size
        tensor, infos = letterbox_batch(frames, size)
        return Prepared(self, frames, tensor, infos)

    def run_prepared(self, prepared: Prepared) -> list[np.ndarray]:
        assert prepared.tensor is not None, "prepared by a LetterboxDetector"
        return self.infer(prepared.tensor)

    def finish(self, prepared: Prepared, outputs: list[np.ndarray]) -> list[Detections]:
        assert prepared.tensor is not None and prepared.infos is not None, "prepared by a LetterboxDetector"
        height, width = prepared.tensor.shape[2:]
        return [Detections(scale_boxes_to_source(xyxy, info, frame.shape), score, class_id)
                for frame, info, (xyxy, score, class_id)
                in zip(prepared.frames, prepared.infos, self.decode(outputs, (width, height)), strict=True)]
