"""`LetterboxDetector`, the part ONNX Runtime and TensorRT share: chunks, padding, decoding, NMS, stages.

A runtime that takes exactly two frames a call (as a TensorRT engine with a fixed batch dimension
does) is played by the tiny ONNX model's own session, so its boxes can be compared with the
ONNX Runtime backend's.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edgefleet.models.backends import create_detector
from edgefleet.models.backends.onnxruntime import OnnxRuntimeDetector
from edgefleet.models.errors import UnsupportedModel
from edgefleet.models.letterbox import LetterboxDetector, head_decoder

from .test_models_backends import frame, tiny_model  # noqa: F401 - the fixture


class TwoFrameRuntime(LetterboxDetector):
    """Runs `onnx`'s session, refusing any batch but two frames: what a fixed-batch engine does."""

    def __init__(self, onnx: OnnxRuntimeDetector):
        self.session, self.input_name = onnx.session, onnx.input_name
        self.names, self.input_size = onnx.names, onnx.input_size
        self.confidence_threshold, self.iou_threshold = onnx.confidence_threshold, onnx.iou_threshold
        self.use_head(*head_decoder("darknet", onnx.anchors, onnx.masks))
        self.max_batch, self.pad_batch = 2, True
        self.calls: list[int] = []
        self.warm_up()

    def _run(self, tensor: np.ndarray) -> list[np.ndarray]:
        assert len(tensor) == 2, f"a fixed-batch runtime got {len(tensor)} frames"
        self.calls.append(len(tensor))
        return self.session.run(None, {self.input_name: tensor})


@pytest.fixture
def onnx(tiny_model):  # noqa: F811 - the fixture
    with create_detector({"type": "onnxruntime", "model": tiny_model, "intra_op_threads": 1}) as det:
        yield det


FRAMES = [frame(64, 64), frame(32, 32), frame(96, 48), frame(10, 300), frame(48, 64)]


def assert_same(got: list, want: list) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-4)
        np.testing.assert_allclose(a.confidence, b.confidence, rtol=1e-5)
        assert a.class_id.tolist() == b.class_id.tolist()


def test_a_fixed_batch_runtime_gets_padded_chunks_and_gives_the_same_boxes(onnx):
    runtime = TwoFrameRuntime(onnx)
    assert runtime.last_inference_ms > 0  # warmed up: one padded call per warm-up frame
    runtime.calls.clear()
    got = runtime.detect_batch(FRAMES)
    assert runtime.calls == [2, 2, 2]  # 5 frames: 2 + 2 + 1 padded
    assert_same(got, onnx.detect_batch(FRAMES))
    assert runtime.detect_batch([]) == [] and runtime.calls == [2, 2, 2]


@pytest.mark.parametrize("which", ["onnxruntime", "fixed batch"])
def test_stages_with_prepare_on_another_thread_equal_detect_batch(onnx, which):
    detector = onnx if which == "onnxruntime" else TwoFrameRuntime(onnx)
    with ThreadPoolExecutor(1) as preparer:
        prepared = preparer.submit(detector.prepare, FRAMES).result()
    assert prepared.detector is detector and prepared.tensor.shape == (5, 3, 32, 32)
    assert_same(detector.finish(prepared, detector.run_prepared(prepared)), detector.detect_batch(FRAMES))


def test_heads_without_what_they_need_are_refused():
    with pytest.raises(UnsupportedModel, match="anchors and masks"):
        head_decoder("darknet")
    with pytest.raises(UnsupportedModel, match="'yolox' is not one of"):
        head_decoder("yolox")


def test_an_end2end_head_keeps_overlapping_boxes_and_the_others_run_nms():
    two_overlapping = [np.array([[[6, 6, 14, 14, 0.9, 0], [6, 6, 14, 15, 0.8, 0]]], np.float32)]
    decode, nms_after = head_decoder("end2end")
    ((xyxy, score, class_id),) = decode(two_overlapping, (32, 32), 0.25)
    assert not nms_after and len(xyxy) == 2 and score.tolist() == pytest.approx([0.9, 0.8])
    assert head_decoder("ultralytics")[1] and head_decoder("darknet", np.zeros((2, 2)), [[0]])[1]
