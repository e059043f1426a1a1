"""CaptureFrame on the agent's side (agent.commands): the picture drawn from a stream's latest frame with its
boxes, zones and lines, its width and byte cap; the worker that encodes off the loop thread and answers, and
refuses a burst beyond its bound."""
from __future__ import annotations

import threading
import time

import cv2
import numpy as np

from edgefleet.agent.analytics import LineCrossing, Totals, ZoneEvent
from edgefleet.agent.commands import (
    CAPTURE_MAX_BYTES,
    MAX_PENDING_CAPTURES,
    Capture,
    FrameCaptures,
    live_snapshot,
)
from edgefleet.agent.latest import LatestFrame
from edgefleet.agent.zones import StreamAnalytics
from edgefleet.common.annotate import LINE_COLOUR, ZONE_COLOUR, colour_of

ANALYTICS = StreamAnalytics.model_validate({
    "units": "pixels",
    "zones": {"door": {"polygon": [[100, 100], [500, 100], [500, 500], [100, 500]]}},
    "lines": {"gate": {"points": [[0, 900], [1280, 900]]}},
})


def latest(width: int = 1280, height: int = 960, boxes: int = 2, stream: str = "cam0",
           image: np.ndarray | None = None) -> LatestFrame:
    image = np.full((height, width, 3), 50, np.uint8) if image is None else image
    xyxy = np.array([[600 + 200 * i, 200, 760 + 200 * i, 600] for i in range(boxes)], np.float32).reshape(-1, 4)
    return LatestFrame(stream, 41, 1_700_000_000.25, image, xyxy, np.arange(1, boxes + 1), ["person"] * boxes,
                       np.full(boxes, 0.9, np.float32))


def decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a decodable JPEG"
    return image


def near(pixel: np.ndarray, colour: tuple[int, int, int], tolerance: int = 60) -> bool:
    """A JPEG's pixel close to the colour drawn (compression moves it a little)."""
    return int(np.abs(pixel.astype(int) - np.array(colour)).sum()) <= tolerance


def test_the_picture_has_the_boxes_zones_and_lines_at_half_size():
    snapshot = live_snapshot(Capture("c1", latest(), 640, ANALYTICS), totals=None)
    assert (snapshot.stream_id, snapshot.kind, snapshot.object_id) == ("cam0", "live", "")
    assert snapshot.capture_time == 1_700_000_000.25
    image = decode(snapshot.jpeg)
    assert image.shape == (480, 640, 3)
    assert near(image[200, 300], colour_of("person")), "the first box's left edge (x 600 -> 300)"
    assert near(image[150, 50], ZONE_COLOUR), "the zone's left edge (x 100 -> 50)"
    assert near(image[450, 320], LINE_COLOUR), "the line (y 900 -> 450)"
    assert near(image[400, 200], (50, 50, 50), 20), "nothing drawn inside the zone"


def test_a_max_width_of_zero_is_the_default_640_and_a_small_frame_is_not_enlarged():
    assert decode(live_snapshot(Capture("c", latest(), 0, None)).jpeg).shape == (480, 640, 3)
    assert decode(live_snapshot(Capture("c", latest(320, 240, 0), 0, None)).jpeg).shape == (240, 320, 3)
    assert decode(live_snapshot(Capture("c", latest(), 1280, None)).jpeg).shape == (960, 1280, 3)


def test_a_busy_frame_fits_the_byte_cap_at_its_width_and_pure_noise_at_a_smaller_one():
    rng = np.random.default_rng(1)
    busy = cv2.resize(rng.integers(0, 256, (54, 96, 3), dtype=np.uint8), (1920, 1080))  # detail, not noise
    assert len(cv2.imencode(".jpg", busy, [cv2.IMWRITE_JPEG_QUALITY, 80])[1]) > CAPTURE_MAX_BYTES
    snapshot = live_snapshot(Capture("c", latest(1920, 1080, image=busy), 1920, None))
    assert len(snapshot.jpeg) <= CAPTURE_MAX_BYTES and decode(snapshot.jpeg).shape == (1080, 1920, 3)
    noise = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    snapshot = live_snapshot(Capture("c", latest(1920, 1080, image=noise), 1920, None))
    assert len(snapshot.jpeg) <= CAPTURE_MAX_BYTES and decode(snapshot.jpeg).shape == (540, 960, 3)


def test_the_zones_occupancy_and_the_lines_counts_are_written():
    """More caption pixels with counts than with zeros: the numbers are drawn, not only the names."""
    quiet = decode(live_snapshot(Capture("c", latest(boxes=0), 640, ANALYTICS), Totals()).jpeg)
    totals = Totals()
    events = [LineCrossing("cam0", "gate", 0, "in", i, "person", i, 0.0) for i in range(1, 13)]
    events += [ZoneEvent("cam0", "door", "enter", 1, "person", 1, 0.0, 0.0, 7)]
    totals.add(events, {("cam0", "door"): 7})
    busy = decode(live_snapshot(Capture("c", latest(boxes=0), 640, ANALYTICS), totals).jpeg)
    assert np.abs(busy.astype(int) - quiet.astype(int)).sum(axis=2).astype(bool).sum() > 20


class Answers:
    """What FrameCaptures sends, as the link would get it."""

    def __init__(self):
        self.got: dict[str, tuple] = {}
        self.done = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, command_id, ok, error, detail, snapshot):
        self.gate.wait(10)
        self.got[command_id] = (ok, error, detail, snapshot)
        self.done.set()


def test_the_worker_answers_with_the_snapshot_from_its_own_thread():
    answers = Answers()
    threads = []
    captures = FrameCaptures(lambda *a: (threads.append(threading.current_thread().name), answers(*a)))
    try:
        assert captures.submit(Capture("c1", latest(), 320, None))
        assert answers.done.wait(10)
    finally:
        captures.close()
    ok, error, detail, snapshot = answers.got["c1"]
    assert ok and not error and detail == f"{len(snapshot.jpeg)} bytes, frame 41"
    assert decode(snapshot.jpeg).shape == (240, 320, 3)
    assert threads[0].startswith("capture") and threads[0] != threading.current_thread().name


def test_a_frame_that_cannot_be_drawn_is_answered_with_the_reason():
    answers = Answers()
    captures = FrameCaptures(answers)
    try:
        grey = latest(image=np.zeros((960, 1280), np.uint8))
        assert captures.submit(Capture("c2", grey, 320, None))
        assert answers.done.wait(10)
    finally:
        captures.close()
    ok, error, _, snapshot = answers.got["c2"]
    assert not ok and snapshot is None
    assert error.startswith("drawing stream 'cam0' failed: expected a BGR HxWx3 uint8 image")


def test_a_burst_beyond_the_bound_is_refused_and_the_bound_frees_again():
    answers = Answers()
    answers.gate.clear()  # the worker holds its first answer until the test lets it go
    captures = FrameCaptures(answers)
    try:
        taken = [captures.submit(Capture(f"c{i}", latest(320, 240), 0, None)) for i in range(MAX_PENDING_CAPTURES + 2)]
        assert taken == [True] * MAX_PENDING_CAPTURES + [False, False]
        answers.gate.set()
        deadline = time.monotonic() + 10
        while captures.pending and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sorted(answers.got) == [f"c{i}" for i in range(MAX_PENDING_CAPTURES)]
        assert captures.submit(Capture("again", latest(320, 240), 0, None))
    finally:
        captures.close()
    assert answers.got["again"][0], "close waits for what was asked"


def test_a_closed_worker_takes_nothing():
    captures = FrameCaptures(Answers())
    captures.close()
    assert not captures.submit(Capture("late", latest(), 0, None))
