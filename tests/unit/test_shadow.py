"""The shadow gate measures fairly: the current engine and the candidate take turns on the same
frames, never running at once on the same cores, while a real loop thread keeps detecting.

The identical model must pass the default gate (0.9x) on a CPU; a candidate that really does
twice the work must still fail it."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.engines import slot_turn
from edgefleet.agent.health import HealthMonitor
from edgefleet.agent.loop import DetectorSlot
from edgefleet.agent.shadow import GateParams, ShadowGate
from edgefleet.models import load_detector

from ..onnx_variants import slow_onnx
from .test_engines import tiny_onnx

DEFAULT_GATE = GateParams(fps_ratio=0.9, min_agreement=0.8)


class Overlap:
    """Counts detector calls in progress at once, over every detector it wraps."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0

    def wrap(self, detector):
        return Watched(detector, self)


class Watched:
    """A detector that tells `Overlap` when it runs (and, with `extra`, repeats its work: a
    deliberately slower candidate that computes the same detections `extra` more times)."""

    def __init__(self, inner, overlap: Overlap | None = None, extra: int = 0):
        self.inner, self.overlap, self.extra = inner, overlap, extra
        self.last_inference_ms = 0.0

    def detect(self, frame):
        if self.overlap is not None:
            with self.overlap.lock:
                self.overlap.running += 1
                self.overlap.most = max(self.overlap.most, self.overlap.running)
        try:
            found = self.inner.detect(frame)
            ms = self.inner.last_inference_ms
            for _ in range(self.extra):
                self.inner.detect(frame)
                ms += self.inner.last_inference_ms
            self.last_inference_ms = ms  # the runtime's time, as every detector reports it
            return found
        finally:
            if self.overlap is not None:
                with self.overlap.lock:
                    self.overlap.running -= 1

    def close(self):
        self.inner.close()


class LoopThread:
    """The agent's detect loop as far as the gate sees it: the slot's detector, called under the
    slot's lock on frame after frame, every detected frame offered to the gate."""

    def __init__(self, slot: DetectorSlot, frames: list[np.ndarray], gate: ShadowGate):
        self.slot, self.frames, self.gate = slot, frames, gate
        self.stop = threading.Event()
        self.detected = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        i = 0
        while not self.stop.is_set():
            frame = self.frames[i % len(self.frames)]
            i += 1
            with self.slot.lock:
                found = self.slot.detector.detect(frame)
                ms = self.slot.detector.last_inference_ms
            self.detected += 1
            self.gate.offer(frame, found, ms)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny real detector made a few milliseconds heavy, so its time per frame is measurable."""
    folder = tmp_path_factory.mktemp("shadow")
    return slow_onnx(tiny_onnx(folder / "tiny.onnx"), folder / "model.onnx", size=384, matmuls=4)


FRAMES = [np.random.default_rng(i).integers(0, 255, (96, 128, 3), dtype=np.uint8) for i in range(8)]


def shadow_test(model: Path, candidate, overlap: Overlap | None = None, fair: bool = True, samples: int = 30):
    """Run the gate to its verdict beside a busy loop thread on the current engine."""
    current = load_detector(model)  # onnxruntime's default: a thread per core, as on a device
    if overlap is not None:
        current = overlap.wrap(current)
    slot = DetectorSlot(current, HealthMonitor())
    gate = ShadowGate(candidate, DEFAULT_GATE, min_samples=samples, max_samples=samples, timeout_s=120,
                      current_turn=(lambda: slot_turn(slot)) if fair else None)
    with LoopThread(slot, FRAMES, gate) as loop:
        verdict = gate.run(threading.Event())
    assert loop.detected > samples, "the loop kept detecting during the window"
    return verdict


@pytest.mark.slow
def test_the_identical_model_passes_the_default_gate_and_never_runs_beside_the_current_one(model):
    overlap = Overlap()
    verdict = shadow_test(model, overlap.wrap(load_detector(model)), overlap)
    assert overlap.most == 1, "the candidate ran while the loop's detector ran"
    assert verdict.passed, verdict.reason
    assert verdict.metrics["agreement"] == 1.0 and verdict.metrics["samples"] == 30
    assert verdict.metrics["fps_ratio"] >= 0.9


@pytest.mark.slow
def test_a_candidate_doing_twice_the_work_still_fails(model):
    verdict = shadow_test(model, Watched(load_detector(model), extra=1))
    assert not verdict.passed
    assert "throughput" in verdict.reason and verdict.metrics["fps_ratio"] < 0.9, verdict.reason
    assert verdict.metrics["agreement"] == 1.0  # same detections: only the speed fails it


def test_in_each_turn_the_candidate_runs_then_the_current_engine():
    order = []

    class Named:
        last_inference_ms = 1.0

        def __init__(self, name):
            self.name = name

        def detect(self, frame):
            order.append(self.name)
            from edgefleet.models.detections import Detections
            return Detections.empty()

    slot = DetectorSlot(Named("current"), HealthMonitor())
    gate = ShadowGate(Named("candidate"), GateParams(), min_samples=4, current_turn=lambda: slot_turn(slot))
    for frame in FRAMES[:4]:
        gate.evaluate(frame, None, 0.0)  # with turns, the loop's own detections and time are not used
    assert order == ["candidate", "current"] * 4
    assert gate.samples == 4 and gate.verdict().passed
