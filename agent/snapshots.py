"""Snapshots of objects: the best crop and an annotated, downscaled frame, JPEG, made off the loop's thread.

While an object lives, `Snapshots.best` (agent.objects calls it on the loop's thread) keeps a
reference to the frame of its best detection: only when the score beats the kept one by
`SCORE_MARGIN`, so the reference changes rarely, and no copy (sources hand over a new array per
frame). At most `max_frames_held` frames are held that way; past that, the crop and a downscaled
copy of the frame are made at once, so memory stays bounded however many objects live.

When the object ends (`end`), one worker thread, fed by a bounded queue, encodes two
`SnapshotRecord`s (common.records): "crop", the padded best box with its longest side at most
`crop_size` pixels, and "frame", the frame at most `frame_width` pixels wide with the box and the
stream's zones and lines drawn (common.annotate). Each JPEG is size-capped: the quality is lowered
until it fits `max_bytes`. At most `per_minute` objects of a stream get snapshots per minute. What
the rate cap or a full queue leaves out, or an encoding that fails, is counted (`OBJECT_TOTALS`,
Prometheus). The loop takes the finished records (`take`, thread-safe) into the outbox.

Settings: agent.yaml `snapshots: {enabled, crop_size, frame_width, quality, max_bytes, per_minute}`
(`SnapshotSettings`, checked once).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgefleet.common.records import SnapshotRecord, TrackedObject

from .objects import OBJECT_TOTALS, ObjectTotals
from .zones import StreamAnalytics

logger = logging.getLogger(__name__)

SCORE_MARGIN = 0.05
"""A better detection replaces the kept frame only when its score beats the kept one's by this much."""
MAX_FRAMES_HELD = 64
"""Frames kept by reference at most (a 1080p frame is 6 MB); past it, crops and small copies are made at once."""
QUEUE_SIZE = 32
"""Objects waiting for the encoder at most; past it they get no snapshot (counted as dropped, "queue")."""


class SnapshotSettings(BaseModel):
    """agent.yaml `snapshots:`."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    crop_size: int = Field(default=320, ge=32, le=1920, description="the crop's longest side at most, pixels")
    frame_width: int = Field(default=640, ge=64, le=3840, description="the annotated frame's width at most, pixels")
    quality: int = Field(default=80, ge=10, le=100, description="JPEG quality to start from (lowered until it fits)")
    max_bytes: int = Field(default=100_000, ge=10_000, le=512_000, description="a JPEG's bytes at most")
    per_minute: int = Field(default=60, ge=1, le=100_000, description="objects of a stream given snapshots per minute")


@dataclass
class _Kept:
    """An object's best detection: the frame (a reference; past the cap a downscaled copy, `factor` its
    scale, and the crop made at once), the box in source pixels, its score and capture time."""
    score: float
    box: tuple[float, float, float, float]
    time: float
    image: np.ndarray
    size: tuple[int, int]  # the source frame's width and height
    held: bool = True      # `image` is the frame itself (False: a downscaled copy, `factor` its scale)
    factor: float = 1.0
    crop: np.ndarray | None = None


@dataclass
class _Job:
    obj: TrackedObject
    kept: _Kept
    setting: StreamAnalytics | None


class Snapshots:
    """The objects' snapshots (see the module's docstring): `best`, `end` and `forget` on the loop's thread
    (agent.objects.SnapshotHook), `take` from the loop's thread; `start()`, `drain()`, `close()`."""

    def __init__(self, settings: SnapshotSettings, analytics: Mapping[str, StreamAnalytics] | None = None, *,
                 totals: ObjectTotals | None = OBJECT_TOTALS, max_frames_held: int = MAX_FRAMES_HELD,
                 queue_size: int = QUEUE_SIZE, clock: Callable[[], float] = time.monotonic):
        self.settings, self.totals, self.max_frames_held = settings, totals, max_frames_held
        self._analytics = dict(analytics or {})
        self._kept: dict[str, _Kept] = {}
        self._held = 0  # kept entries that hold a whole frame by reference
        self._recent: dict[str, deque[float]] = {}  # per stream: when its last snapshots were queued
        self._clock = clock
        self._queue: queue.Queue[_Job | None] = queue.Queue(queue_size)
        self._done: list[SnapshotRecord] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.made = 0
        self.dropped: dict[str, int] = {}
        self.encode_s = 0.0
        """Seconds spent encoding (crop and frame), over `made` objects."""

    # ---- the loop's thread ----

    def best(self, obj: TrackedObject, image: np.ndarray) -> None:
        kept = self._kept.get(obj.object_id)
        if kept is not None and obj.best_score < kept.score + SCORE_MARGIN:
            return
        if kept is not None and kept.held:
            self._held -= 1
        size = (image.shape[1], image.shape[0])
        new = _Kept(obj.best_score, obj.best_box, obj.last_seen, image, size)
        if self._held >= self.max_frames_held:
            self._shrink(new)
        else:
            self._held += 1
        self._kept[obj.object_id] = new

    def end(self, obj: TrackedObject) -> bool:
        """Queue the ended object's snapshots; whether they will be made."""
        kept = self._pop(obj.object_id)
        if kept is None or not self.settings.enabled:
            return False
        recent = self._recent.setdefault(obj.stream_id, deque())
        now = self._clock()
        while recent and recent[0] <= now - 60.0:
            recent.popleft()
        if len(recent) >= self.settings.per_minute:
            self._drop(obj.stream_id, "rate")
            return False
        try:
            self._queue.put_nowait(_Job(obj, kept, self._analytics.get(obj.stream_id)))
        except queue.Full:
            self._drop(obj.stream_id, "queue")
            return False
        recent.append(now)
        return True

    def forget(self, object_id: str) -> None:
        self._pop(object_id)

    def take(self) -> list[SnapshotRecord]:
        """The records encoded since the last take (any thread)."""
        with self._lock:
            done, self._done = self._done, []
        return done

    def _pop(self, object_id: str) -> _Kept | None:
        kept = self._kept.pop(object_id, None)
        if kept is not None and kept.held:
            self._held -= 1
        return kept

    def _shrink(self, kept: _Kept) -> None:
        """Past the cap: the crop and a downscaled copy of the frame now, not the frame."""
        from edgefleet.common import annotate

        kept.crop = annotate.crop(kept.image, kept.box, max_side=self.settings.crop_size)
        small, factor = annotate.downscale(kept.image, max_width=self.settings.frame_width)
        kept.image, kept.factor = (small.copy() if small is kept.image else small), factor
        kept.held = False

    def _drop(self, stream_id: str, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if self.totals is not None:
            self.totals.add_snapshot(stream_id, f"dropped_{reason}")

    # ---- the worker ----

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="snapshots", daemon=True)
        self._thread.start()

    def drain(self, timeout_s: float = 10.0) -> None:
        """Wait until every queued object is encoded (up to `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline and self._thread is not None:
            time.sleep(0.01)

    def close(self, timeout_s: float = 5.0) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout_s)
        self._thread = None

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                records = self._encode(job)
                if records:
                    with self._lock:
                        self._done += records
            finally:
                self._queue.task_done()

    def _encode(self, job: _Job) -> list[SnapshotRecord]:
        start = time.perf_counter()
        obj, kept = job.obj, job.kept
        try:
            crop, frame = encode(kept, obj, job.setting, self.settings)
        except (ValueError, OSError) as err:  # a JPEG that cannot fit max_bytes, a box outside the frame
            logger.warning("snapshot of object %s (%s): %s", obj.object_id, obj.stream_id, err)
            self._drop(obj.stream_id, "error")
            return []
        self.encode_s += time.perf_counter() - start
        self.made += 1
        if self.totals is not None:
            self.totals.add_snapshot(obj.stream_id, "made")
        return [SnapshotRecord(obj.stream_id, obj.object_id, kind, obj.label, kept.time, jpeg, kept.score)
                for kind, jpeg in (("crop", crop), ("frame", frame))]


def encode(kept: _Kept, obj: TrackedObject, setting: StreamAnalytics | None,
           settings: SnapshotSettings) -> tuple[bytes, bytes]:
    """The crop's and the annotated frame's JPEGs (common.annotate), each within `settings.max_bytes`."""
    from edgefleet.common import annotate

    crop = kept.crop if kept.crop is not None else annotate.crop(kept.image, kept.box, max_side=settings.crop_size)
    zones, lines = setting.geometry(*kept.size) if setting is not None else ([], [])
    box = annotate.Box(kept.box, obj.label, kept.score, obj.track_id)
    shapes = ([annotate.ZoneShape(z.name, z.polygon) for z in zones],
              [annotate.LineShape(ln.name, ln.points) for ln in lines])
    if kept.held:
        frame = annotate.render(kept.image, [box], *shapes, max_width=settings.frame_width)
    else:
        frame = annotate.draw(kept.image, [box], *shapes, scale=kept.factor)
    return (capped(crop, settings.quality, settings.max_bytes, max_side=settings.crop_size),
            capped(frame, settings.quality, settings.max_bytes, max_width=settings.frame_width))


def capped(image: np.ndarray, quality: int, max_bytes: int, *, max_width: int | None = None,
           max_side: int | None = None) -> bytes:
    """The image as a JPEG of at most `max_bytes`: the quality lowered first (common.annotate.encode_jpeg),
    then, for a picture that fits at no quality (fine texture, noise), its size halved until it fits."""
    from edgefleet.common import annotate

    while True:
        try:
            return annotate.encode_jpeg(image, max_width=max_width, max_side=max_side, quality=quality,
                                        max_bytes=max_bytes)
        except ValueError:
            longest = max(image.shape[:2]) if max_side is None else min(max_side, max(image.shape[:2]))
            if longest <= 32:
                raise
            max_side, max_width = longest // 2, None
