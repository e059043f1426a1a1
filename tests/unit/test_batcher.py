"""agent.batcher.DynamicBatcher: ordering, windowing, drop-oldest per stream, no cross-stream blocking.

The "detector" here is a small fake that records its batches, optionally slow or gated; the
real detector is exercised in tests/integration/test_inference.py.
"""
from __future__ import annotations

import threading
import time

import pytest

from edgefleet.agent.batcher import BatchConfig, BatcherStopped, DynamicBatcher, FrameDropped
from edgefleet.agent.errors import ConfigError


class FakeDetector:
    """`run_batch` that records each batch, takes `seconds` per call, and waits for `gate` if given."""

    def __init__(self, seconds: float = 0.0, gate: threading.Event | None = None, fail_on=None):
        self.seconds, self.gate, self.fail_on = seconds, gate, fail_on
        self.batches: list[list] = []
        self.started = threading.Event()
        self.called_at: list[float] = []

    def __call__(self, items: list) -> list:
        self.called_at.append(time.monotonic())
        self.batches.append(list(items))
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        time.sleep(self.seconds)
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError("detector failed")
        return [("result", item) for item in items]


def make(detector, **config) -> DynamicBatcher:
    batcher = DynamicBatcher(detector, BatchConfig(**config))
    batcher.start()
    return batcher


def test_each_item_gets_its_own_result_in_submission_order_per_stream():
    detector = FakeDetector(seconds=0.01)
    batcher = make(detector, max_batch=4, window_s=0.002, max_waiting_per_key=100)
    try:
        futures = [(key, i, batcher.submit(key, (key, i))) for i in range(20) for key in ("a", "b", "c")]
        assert [f.result(5) for _, _, f in futures] == [("result", (k, i)) for k, i, _ in futures]
        seen = [item for batch in detector.batches for item in batch]
        for key in "abc":
            assert [i for k, i in seen if k == key] == list(range(20))
        assert max(len(b) for b in detector.batches) <= 4
    finally:
        batcher.stop()


@pytest.mark.parametrize("max_batch, window_s, submitted, batch_sizes, min_wait, max_wait", [
    (8, 0.2, 3, [3], 0.15, 2.0),    # not full: goes when the oldest waited the window
    (4, 5.0, 4, [4], 0.0, 1.0),     # full: goes at once, whatever the window
    (4, 5.0, 9, [4, 4, 1], 0.0, None),  # full batches go at once; the rest waits for its window
])
def test_a_batch_goes_when_full_or_when_its_oldest_frame_waited_the_window(
        max_batch, window_s, submitted, batch_sizes, min_wait, max_wait):
    detector = FakeDetector()
    batcher = make(detector, max_batch=max_batch, window_s=window_s, max_waiting_per_key=100)
    try:
        t0 = time.monotonic()
        futures = [batcher.submit(f"s{i}", i) for i in range(submitted)]
        if max_wait is None:  # the last, partial batch would wait the 5 s window: check the full ones only
            futures[max_batch * (submitted // max_batch) - 1].result(2)
            time.sleep(0.05)
            assert [len(b) for b in detector.batches] == batch_sizes[:-1]
            return
        for f in futures:
            f.result(max_wait + 1)
        assert [len(b) for b in detector.batches] == batch_sizes
        assert min_wait <= detector.called_at[0] - t0 <= max_wait
    finally:
        batcher.stop()


def test_window_zero_takes_what_is_waiting_when_the_worker_is_free():
    gate = threading.Event()
    detector = FakeDetector(gate=gate)
    batcher = make(detector, max_batch=8, window_s=0.0, max_waiting_per_key=100)
    try:
        first = batcher.submit("a", 0)
        assert detector.started.wait(2)
        rest = [batcher.submit(f"s{i}", i) for i in range(1, 6)]  # arrive while the detector is busy
        gate.set()
        for f in [first, *rest]:
            f.result(2)
        assert [len(b) for b in detector.batches] == [1, 5]
    finally:
        batcher.stop()


def test_a_stream_too_fast_for_the_detector_loses_its_oldest_waiting_frames():
    gate = threading.Event()
    detector = FakeDetector(gate=gate)
    batcher = make(detector, max_batch=8, window_s=0.0, max_waiting_per_key=2)
    try:
        busy = batcher.submit("a", 0)
        assert detector.started.wait(2)  # frame 0 is being detected; the rest wait
        waiting = [batcher.submit("a", i) for i in range(1, 6)]
        other = batcher.submit("b", 100)
        assert batcher.waiting("a") == 2 and batcher.waiting("b") == 1
        gate.set()
        assert busy.result(2) == ("result", 0)
        for f in waiting[:3]:  # frames 1, 2, 3: pushed out by newer ones
            with pytest.raises(FrameDropped, match="dropped"):
                f.result(2)
        assert [f.result(2) for f in waiting[3:]] == [("result", 4), ("result", 5)]
        assert other.result(2) == ("result", 100)
        assert batcher.dropped == {"a": 3}
        assert detector.batches == [[0], [4, 5, 100]]
        assert batcher.forget("a") == 3 and batcher.dropped["a"] == 0
    finally:
        batcher.stop()


def test_a_flooding_stream_never_delays_another_stream_beyond_one_batch():
    detector = FakeDetector(seconds=0.03)
    batcher = make(detector, max_batch=4, window_s=0.001, max_waiting_per_key=2)
    try:
        flood = [batcher.submit("flood", i) for i in range(50)]
        time.sleep(0.01)
        t0 = time.monotonic()
        calm = batcher.submit("calm", "x")
        assert calm.result(2) == ("result", "x")
        waited = time.monotonic() - t0
        assert waited < 0.03 * 3 + 0.1, f"the calm stream waited {waited:.3f}s behind the flood"
        assert batcher.dropped["calm"] == 0
        assert batcher.dropped["flood"] >= 40
        outcomes = []
        for f in flood:
            try:
                outcomes.append(f.result(2)[1])
            except FrameDropped:
                pass
        assert outcomes == sorted(outcomes) and outcomes[-1] == 49  # in order, newest always kept
    finally:
        batcher.stop()


def test_a_failed_batch_fails_its_frames_and_the_next_batch_runs():
    detector = FakeDetector(fail_on="bad")
    batcher = make(detector, max_batch=2, window_s=0.05, max_waiting_per_key=10)
    try:
        bad = [batcher.submit("a", "bad"), batcher.submit("b", "ok-1")]
        with pytest.raises(RuntimeError, match="detector failed"):
            bad[0].result(2)
        with pytest.raises(RuntimeError):
            bad[1].result(2)
        assert batcher.submit("a", "ok-2").result(2) == ("result", "ok-2")
    finally:
        batcher.stop()


def test_stop_fails_what_still_waits_and_refuses_new_frames():
    gate = threading.Event()
    detector = FakeDetector(gate=gate)
    batcher = make(detector, max_batch=1, window_s=0.0)
    busy = batcher.submit("a", 0)
    assert detector.started.wait(2)
    waiting = batcher.submit("b", 1)
    threading.Timer(0.1, gate.set).start()
    batcher.stop()
    assert busy.result(2) == ("result", 0)  # the batch in progress finishes
    with pytest.raises(BatcherStopped):
        waiting.result(2)
    with pytest.raises(BatcherStopped):
        batcher.submit("c", 2).result(2)


@pytest.mark.parametrize("config, field", [
    ({"max_batch": 0}, "max_batch"),
    ({"window_s": -0.001}, "window"),
    ({"max_waiting_per_key": 0}, "max_waiting_per_key"),
])
def test_bad_config_names_the_field(config, field):
    with pytest.raises(ConfigError, match=field):
        BatchConfig(**config)
