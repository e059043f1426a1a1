"""Snapshots (agent.snapshots): the best crop and the annotated frame as size-capped JPEGs, encoded on the
worker thread; the kept frame changes only past a margin, frames held are capped, the rate cap and a full
queue drop (counted); the settings in agent.yaml; the loop puts them into the outbox; the encoding's cost."""
from __future__ import annotations

import random
import time

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from edgefleet.agent.analytics import Totals
from edgefleet.agent.config import AgentConfig
from edgefleet.agent.metrics import AgentMetrics
from edgefleet.agent.objects import ObjectSettings, ObjectTotals, StreamObjects
from edgefleet.agent.snapshots import Snapshots, SnapshotSettings
from edgefleet.agent.zones import StreamAnalytics
from edgefleet.common.records import ObjectEventRecord, SnapshotRecord, TrackedObject

from .test_objects import run_loop

LINE = StreamAnalytics.model_validate({"lines": {"door": {"points": [[0.0, 0.5], [1.0, 0.5]]}}})


def scene(width: int = 1280, height: int = 720, seed: int = 0, noise: int = 60, blob: int = 8) -> np.ndarray:
    """A textured frame (blobs of `blob` px and `noise`: fine detail compresses badly, as real scenes' does)."""
    rng = np.random.default_rng(seed)
    image = cv2.resize(rng.integers(0, 255, (height // blob, width // blob, 3), dtype=np.uint8), (width, height),
                       interpolation=cv2.INTER_CUBIC)
    return (image // 2 + rng.integers(0, noise + 1, (height, width, 3), dtype=np.uint8)).astype(np.uint8)


def tracked(object_id: str, score: float, box=(400.0, 100.0, 560.0, 500.0), stream: str = "cam0") -> TrackedObject:
    return TrackedObject(object_id, stream, 7, "person", 0, 1000.0, 1001.0, score, box)


def made(snaps: Snapshots) -> list[SnapshotRecord]:
    snaps.drain(30)
    return snaps.take()


def decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return image


def magenta_columns(image: np.ndarray, top: int, bottom: int) -> float:
    """The share of columns (clear of the captions at the left) with a magenta pixel in rows top..bottom."""
    band = image[top:bottom, 100:620].astype(int)
    return float(((np.minimum(band[..., 0], band[..., 2]) - band[..., 1]).max(axis=0) > 60).mean())


@pytest.fixture
def snaps():
    s = Snapshots(SnapshotSettings(), {"cam0": LINE}, totals=ObjectTotals())
    s.start()
    yield s
    s.close()


def test_an_ended_object_gets_its_crop_and_its_annotated_frame(snaps):
    obj = tracked("a", 0.8)
    snaps.best(obj, scene())
    assert snaps.end(obj)
    crop, frame = made(snaps)
    assert (crop.kind, frame.kind) == ("crop", "frame")
    assert {(r.object_id, r.stream_id, r.label, r.score, r.capture_time) for r in (crop, frame)} == {
        ("a", "cam0", "person", 0.8, 1001.0)}
    small, full = decode(crop.jpeg), decode(frame.jpeg)
    assert max(small.shape[:2]) <= 320 and small.shape[0] > small.shape[1]  # a tall person's box, padded
    assert full.shape[:2] == (360, 640)
    assert len(crop.jpeg) <= 100_000 and len(frame.jpeg) <= 100_000
    # the line across the middle is drawn magenta (BGR 255, 0, 255): nearly every column has it near row 180,
    # none far from it
    assert magenta_columns(full, 178, 183) > 0.8 and magenta_columns(full, 100, 105) < 0.1
    assert snaps.totals is not None and snaps.totals.snapshot()[1] == {("cam0", "made"): 1}


@pytest.mark.parametrize(("noise", "blob", "full_width"), [(0, 48, True), (60, 8, False)])
def test_the_jpeg_fits_max_bytes_quality_lowered_first_then_the_size(noise, blob, full_width):
    """A smooth scene fits at a lower quality and its full width; one of fine noise fits no quality at
    1280 px and is halved until it does."""
    image = scene(seed=3, noise=noise, blob=blob)
    assert len(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1]) > 50_000
    s = Snapshots(SnapshotSettings(max_bytes=50_000, quality=95, frame_width=1280), totals=None)
    s.start()
    try:
        obj = tracked("a", 0.8)
        s.best(obj, image)
        assert s.end(obj)
        records = made(s)
    finally:
        s.close()
    assert [r.kind for r in records] == ["crop", "frame"]
    assert all(len(r.jpeg) <= 50_000 for r in records)
    assert (decode(records[1].jpeg).shape[1] == 1280) is full_width


def test_the_kept_frame_changes_only_when_the_score_beats_it_by_the_margin(snaps):
    obj = tracked("a", 0.5)
    first, second = scene(seed=1), scene(seed=2)
    snaps.best(obj, first)
    for score in (0.52, 0.54):
        obj.best_score = score
        snaps.best(obj, second)
    snaps.end(obj)
    assert {r.score for r in made(snaps)} == {0.5}
    obj = tracked("b", 0.5)
    snaps.best(obj, first)
    obj.best_score = 0.56
    snaps.best(obj, second)
    snaps.end(obj)
    assert {r.score for r in made(snaps)} == {0.56}


def test_past_the_cap_frames_are_not_held_and_snapshots_still_come():
    s = Snapshots(SnapshotSettings(), {"cam0": LINE}, totals=None, max_frames_held=2)
    objs = [tracked(str(i), 0.8) for i in range(5)]
    for obj in objs:
        s.best(obj, scene(seed=4))
    assert s._held == 2  # the other three keep a crop and a 640-wide copy instead
    s.forget("0")
    assert s._held == 1
    s.start()
    try:
        assert all(s.end(obj) for obj in objs[1:])
        records = made(s)
    finally:
        s.close()
    assert sorted((r.object_id, r.kind) for r in records) == sorted(
        (str(i), k) for i in range(1, 5) for k in ("crop", "frame"))
    sizes = {(r.object_id, r.kind): decode(r.jpeg).shape[:2] for r in records}
    assert sizes[("1", "frame")] == sizes[("4", "frame")] == (360, 640)
    assert sizes[("1", "crop")] == sizes[("4", "crop")]
    assert s._held == 0


def test_the_rate_cap_and_a_full_queue_drop_and_count():
    now = [0.0]
    totals = ObjectTotals()
    s = Snapshots(SnapshotSettings(per_minute=2), totals=totals, queue_size=2, clock=lambda: now[0])
    objs = [tracked(str(i), 0.8) for i in range(4)]
    for obj in objs:
        s.best(obj, scene(320, 240))
    assert [s.end(o) for o in objs[:3]] == [True, True, False]  # the third within the minute
    now[0] = 61.0
    assert s.end(objs[3]) is False  # the minute passed, but the worker has not started: the queue is full
    assert s.dropped == {"rate": 1, "queue": 1}
    assert totals.snapshot()[1] == {("cam0", "dropped_rate"): 1, ("cam0", "dropped_queue"): 1}
    assert s.end(tracked("never-seen", 0.9)) is False  # nothing kept for it


def test_disabled_snapshots_make_nothing():
    s = Snapshots(SnapshotSettings(enabled=False), totals=None)
    obj = tracked("a", 0.8)
    s.best(obj, scene(320, 240))
    assert s.end(obj) is False


def test_an_object_s_end_event_says_it_has_a_snapshot(snaps):
    objects = StreamObjects("cam0", ObjectSettings(), snapshots=snaps, totals=None, rng=random.Random(0))
    image = scene()
    for i in range(5):
        objects.update(1000.0 + i, np.array([[400, 100, 560, 500.0 + i]]), np.array([3]), np.array([0]),
                       ["person"], np.array([0.5 + i / 10]), np.zeros(1, bool), (), image)
    (end,) = objects.end_all()
    assert (end.type, end.object.has_snapshot) == ("end", True)
    records = made(snaps)
    assert {(r.object_id, r.kind) for r in records} == {(end.object.object_id, "crop"),
                                                         (end.object.object_id, "frame")}
    assert [r.score for r in records] == pytest.approx([0.9, 0.9])


@pytest.mark.parametrize(("settings", "message"), [
    ({"max_bytes": 5}, "snapshots\n  Value error, max_bytes: input should be greater than or equal to 10000, got 5"),
    ({"qualty": 50}, "unknown key 'qualty' (keys: enabled, crop_size, frame_width, quality, max_bytes, per_minute)"),
    ({"crop_size": "big"}, "crop_size: input should be a valid integer"),
    (3, "must be a mapping of settings"),
])
def test_bad_settings_are_refused_naming_the_key(settings, message):
    with pytest.raises(ValidationError) as err:
        AgentConfig.model_validate({"controller": "127.0.0.1:1", "source": ["x"], "snapshots": settings})
    assert message in str(err.value)


def test_the_loop_puts_snapshots_into_the_outbox(tmp_path):
    agent = run_loop(tmp_path)
    records = agent.outbox.pending(limit=1000)
    agent.outbox.close()
    (end,) = [r for r in records if isinstance(r, ObjectEventRecord) and r.type == "end"]
    snapshots = [r for r in records if isinstance(r, SnapshotRecord)]
    assert end.object.has_snapshot
    assert sorted(r.kind for r in snapshots) == ["crop", "frame"]
    assert {r.object_id for r in snapshots} == {end.object.object_id}
    assert decode(next(r.jpeg for r in snapshots if r.kind == "frame")).shape[:2] == (480, 640)


def test_encoding_cost_per_object():
    """Prints the CPU cost of one object's snapshots (crop + annotated frame) from a 1280x720 frame at
    the defaults (reported in docs/zones.md); a generous bound catches a regression by an order of magnitude."""
    s = Snapshots(SnapshotSettings(), {"cam0": LINE}, totals=None)
    image = scene()
    objs = [tracked(str(i), 0.8, box=(100.0 + 20 * i, 100.0, 260.0 + 20 * i, 500.0)) for i in range(20)]
    for obj in objs:
        s.best(obj, image)
        s.end(obj)
    cpu = time.process_time()
    s.start()
    try:
        records = made(s)
    finally:
        s.close()
    cpu = time.process_time() - cpu
    assert len(records) == 40
    per_object_ms = s.encode_s / s.made * 1000
    print(f"\nagent.snapshots: {per_object_ms:.1f} ms per object (crop + frame, 1280x720 source), "
          f"{cpu / s.made * 1000:.1f} ms CPU")
    assert per_object_ms < 200


def test_prometheus_counts_object_events_and_snapshots_made_and_dropped():
    totals = ObjectTotals()
    objects = StreamObjects("cam0", ObjectSettings(), totals=totals, rng=random.Random(0))
    for i in range(3):
        objects.update(1000.0 + i, np.array([[0, 0, 10, 10.0]]), np.array([1]), np.array([0]), ["person"],
                       np.array([0.9]), np.zeros(1, bool))
    objects.end_all()
    totals.add_snapshot("cam0", "made")
    totals.add_snapshot("cam0", "dropped_rate")
    text = AgentMetrics(dict, dict, totals=Totals(), objects=totals).render()
    for line in ('edgefleet_agent_object_events_total{stream="cam0",type="new"} 1.0',
                 'edgefleet_agent_object_events_total{stream="cam0",type="end"} 1.0',
                 'edgefleet_agent_snapshots_total{stream="cam0"} 1.0',
                 'edgefleet_agent_snapshots_dropped_total{reason="rate",stream="cam0"} 1.0'):
        assert line in text, text
