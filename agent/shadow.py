"""The shadow test: a candidate engine and the current one take turns on live frames, and are judged."""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefleet.models.yolo import box_iou, greedy_pairs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateParams:
    """DeployArtifact's gate. 0 leaves a bound off: fps_ratio 0 accepts any speed, min_agreement 0
    any detections, window_s 0 ends the window as soon as it has its minimum number of samples."""

    fps_ratio: float = 0.0
    min_agreement: float = 0.0
    window_s: float = 0.0
    expect_different_detections: bool = False


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def match_count(current, candidate, iou_threshold: float = 0.5) -> int:
    """Greedy one-to-one matches (highest IoU first) of same-class boxes with IoU >= `iou_threshold`."""
    iou = box_iou(current.xyxy, candidate.xyxy)
    if not iou.size:
        return 0
    # identical boxes match even at zero area (a box clipped flat at the frame's edge)
    iou[np.all(current.xyxy[:, None, :] == candidate.xyxy[None, :, :], axis=2)] = 1.0
    iou = np.where(current.class_id[:, None] == candidate.class_id[None, :], iou, 0.0)
    return len(greedy_pairs(iou, iou_threshold))


def timed_detect(detector, frame: np.ndarray) -> tuple[Any, float]:
    """The detector's detections on `frame` and its inference time: its `last_inference_ms` (the
    runtime's run only, what the loop's health measures) or, when it keeps none, the call's wall time."""
    t0 = time.perf_counter()
    found = detector.detect(frame)
    wall_ms = (time.perf_counter() - t0) * 1000
    return found, float(getattr(detector, "last_inference_ms", 0.0)) or wall_ms


CurrentTurn = Callable[[], AbstractContextManager[Any]]
"""Enters the loop's detector slot (the loop waits meanwhile) and yields the detector it runs now."""


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    reason: str
    metrics: dict[str, float]


class ShadowGate:
    """Runs a candidate detector and the current one on the same sampled frames, and judges the candidate.

    The loop thread calls `offer(frame, current_detections, current_ms)` (a queue of one, the newest
    sample wins, never blocks); the worker thread runs `run(stop)`, which takes samples and, with
    `current_turn` (the agent's), times both engines on each frame in turns: inside the turn the
    loop's detector is not running, so the candidate runs on the frame, then the current engine,
    each alone on the device's cores (`_take_turns` says why in that order). Running them at
    the same time would halve both on a CPU device, and an identical model would measure ~0.5x.
    Without `current_turn` (tests with scripted detectors) the loop's own detections and time count.
    It accumulates:

    - latency: the candidate's inference time per frame (its `last_inference_ms`, the runtime's run
      only, the measure the loop's health uses for the current engine); p50 and p95.
    - fps_ratio: the candidate's throughput relative to the current engine's on the same frames,
      the median over sampled frames of (current ms / candidate ms); 1.0 is as fast, 0.5 half as
      fast. A median, so that a few frames delayed by the scheduler do not decide.
    - agreement: detection F1 between candidate and current, over all sampled frames together.
      Boxes scoring at least `score_threshold` (the publish threshold: what the device would store)
      are matched one-to-one, same class and IoU >= `iou_threshold` (0.5), highest IoU first;
      agreement = 2 * matches / (current boxes + candidate boxes). 1.0 when neither finds anything.

    The window ends once `window_s` has passed AND `min_samples` frames were tested, or at
    `max_samples`; after `timeout_s` without enough samples the gate fails. Passing needs all of:
    the window complete, p95 within the plan's latency budget (when it has one), fps_ratio >=
    the gate's fps_ratio, and agreement >= min_agreement unless the rollout expects different
    detections (a new class list, a retrained model). The candidate was loaded and warmed up
    before it got here (EngineManager reports WARMING_UP failures itself).
    """

    def __init__(self, candidate, params: GateParams, *, latency_budget_ms: float = 0.0,
                 score_threshold: float = 0.25, iou_threshold: float = 0.5, min_samples: int = 10,
                 max_samples: int = 300, timeout_s: float | None = None, clock: Callable[[], float] = time.monotonic,
                 current_turn: CurrentTurn | None = None):
        self.candidate, self.params = candidate, params
        self.current_turn = current_turn
        self.latency_budget_ms = latency_budget_ms
        self.score_threshold, self.iou_threshold = score_threshold, iou_threshold
        self.min_samples, self.max_samples = min_samples, max_samples
        self.timeout_s = timeout_s if timeout_s is not None else max(60.0, 4 * params.window_s)
        self.clock = clock
        self.started = clock()
        self._inbox: queue.Queue = queue.Queue(maxsize=1)
        self.candidate_ms: list[float] = []
        self.current_ms: list[float] = []
        self.current_boxes = self.candidate_boxes = self.matches = 0

    # loop thread
    def offer(self, frame: np.ndarray, current, current_ms: float) -> None:
        """Hand over a sample; replaces one not taken yet. Never blocks."""
        try:
            self._inbox.get_nowait()
        except queue.Empty:
            pass
        try:
            self._inbox.put_nowait((frame, current, current_ms))
        except queue.Full:  # the worker cannot refill it; a single producer never gets here
            pass

    # worker thread
    def evaluate(self, frame: np.ndarray, current, current_ms: float) -> None:
        """Run the candidate (and, with `current_turn`, the current engine again) on one frame and
        add it to the window."""
        if self.current_turn is None:
            found, candidate_ms = timed_detect(self.candidate, frame)
        else:
            current, current_ms, found, candidate_ms = self._take_turns(frame)
        self.candidate_ms.append(candidate_ms)
        self.current_ms.append(float(current_ms))
        found = found[found.confidence >= self.score_threshold]
        current = current[current.confidence >= self.score_threshold]
        self.current_boxes += len(current)
        self.candidate_boxes += len(found)
        self.matches += match_count(current, found, self.iou_threshold)

    def _take_turns(self, frame: np.ndarray) -> tuple[Any, float, Any, float]:
        """Both engines on `frame`, one after the other while the loop waits: the candidate first,
        then the current engine. The loop ran the current engine just before the turn, so each
        engine runs right after the other one did and starts with the same leftovers of it (an
        ONNX Runtime thread pool still spinning on the cores, caches filled by the other model);
        running the current engine first would hand every one of those to the candidate."""
        assert self.current_turn is not None
        with self.current_turn() as current_detector:
            found, candidate_ms = timed_detect(self.candidate, frame)
            current, current_ms = timed_detect(current_detector, frame)
        return current, current_ms, found, candidate_ms

    @property
    def samples(self) -> int:
        return len(self.candidate_ms)

    def elapsed(self) -> float:
        return self.clock() - self.started

    def done(self) -> bool:
        if self.samples >= self.max_samples:
            return True
        return self.samples >= self.min_samples and self.elapsed() >= self.params.window_s

    def timed_out(self) -> bool:
        return self.elapsed() >= self.timeout_s

    def run(self, stop: threading.Event, progress: Callable[[float], None] = lambda fraction: None) -> GateVerdict:
        """Take and evaluate samples until the window is complete, it times out, or `stop` is set."""
        while not (self.done() or self.timed_out() or stop.is_set()):
            try:
                sample = self._inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            self.evaluate(*sample)
            progress(self.fraction())
        return self.verdict()

    def fraction(self) -> float:
        by_time = min(1.0, self.elapsed() / self.params.window_s) if self.params.window_s else 1.0
        return min(1.0, max(self.samples / self.max_samples, min(by_time, self.samples / self.min_samples)))

    def fps_ratio(self) -> float:
        """The median of the per-frame ratios current ms / candidate ms: each pair ran back to back,
        so a load that comes and goes on the device (another process, a thermal step) weighs on both
        of a pair and cancels in its ratio, where a ratio of two medians would take it as a difference."""
        ratios = [cur / cand for cur, cand in zip(self.current_ms, self.candidate_ms) if cand > 0]
        if len(ratios) < len(self.candidate_ms) or not ratios:
            return 0.0  # a candidate that reports no time cannot show its speed
        return float(np.median(ratios))

    def metrics(self) -> dict[str, float]:
        candidate_p50, current_p50 = percentile(self.candidate_ms, 50), percentile(self.current_ms, 50)
        boxes = self.current_boxes + self.candidate_boxes
        return {
            "samples": float(self.samples), "window_s": round(self.elapsed(), 3),
            "candidate_ms_p50": candidate_p50, "candidate_ms_p95": percentile(self.candidate_ms, 95),
            "current_ms_p50": current_p50, "current_ms_p95": percentile(self.current_ms, 95),
            "fps_ratio": self.fps_ratio(),
            "agreement": 2.0 * self.matches / boxes if boxes else 1.0,
            "current_boxes": float(self.current_boxes), "candidate_boxes": float(self.candidate_boxes),
        }

    def verdict(self) -> GateVerdict:
        m, p = self.metrics(), self.params
        if not self.done():
            return GateVerdict(False, f"the shadow test got {self.samples} sampled frame(s) in {m['window_s']:.0f} s "
                                      f"(needs {self.min_samples} over {p.window_s:.0f} s); is the source running?", m)
        problems = []
        if self.latency_budget_ms > 0 and m["candidate_ms_p95"] > self.latency_budget_ms:
            problems.append(f"p95 {m['candidate_ms_p95']:.1f} ms exceeds the plan's latency budget "
                            f"{self.latency_budget_ms:.1f} ms")
        if m["fps_ratio"] < p.fps_ratio:
            problems.append(f"throughput {m['fps_ratio']:.2f}x the current engine's (gate {p.fps_ratio:.2f}x; "
                            f"p50 {m['candidate_ms_p50']:.1f} ms vs {m['current_ms_p50']:.1f} ms)")
        if not p.expect_different_detections and m["agreement"] < p.min_agreement:
            problems.append(f"detection agreement {m['agreement']:.2f} with the current engine "
                            f"(gate {p.min_agreement:.2f}; F1 of same-class IoU>={self.iou_threshold} matches)")
        summary = (f"{self.samples} frames, p95 {m['candidate_ms_p95']:.1f} ms, {m['fps_ratio']:.2f}x throughput, "
                   f"agreement {m['agreement']:.2f}")
        if problems:
            return GateVerdict(False, "; ".join(problems) + f" ({summary})", m)
        return GateVerdict(True, f"passed: {summary}", m)
