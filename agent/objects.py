"""Tracked objects: each track of a local stream as one object over its life, and its events.

`StreamObjects.update(...)` takes one frame's tracked rows (detected or predicted alike) and the zone
events and line crossings agent.analytics found on it, and keeps per track a `TrackedObject`
(common.records): its object id ("<first seen ms>-<6 random hex>", Frigate's event id shape), the
label seen on most of its frames, first and last seen, its best detected score and box, a path of at
most `path_points` reference points (bottom centre) spread over its life, the zones it entered and
the lines it crossed, its frame count. It returns the events to keep in the outbox:

- "new" once the track has been on `confirm_frames` frames (a track that flickers for a frame or two
  is no object; one that never gets there has no events at all);
- "update" when something meaningful changed since the last event (a zone entered, a line crossed,
  the majority label changed, the best score up by `score_margin`), at most every `update_every_s`
  seconds of capture time;
- "end" once the track has been gone `lost_frames` frames of its stream (it leaves its zones then;
  agent.analytics keeps its sides of the lines 300 frames, for its return or a hand-off), and for
  every live object at `end_all` (the loop's finish), so a clean stop loses none.

Each event carries a copy of the object's state then: the outbox and the link may hold it while the
object lives on. The work per frame is a dictionary look-up and a few comparisons per row; the
reference points of all rows come from one numpy expression, the ended tracks from one pass.

`SnapshotHook` (agent.snapshots) hears of each better detection (with the frame) and of each end.
`OBJECT_TOTALS` counts events for Prometheus (agent.metrics).
"""
from __future__ import annotations

import dataclasses
import random
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgefleet.common.records import ObjectEventRecord, TrackedObject

from .analytics import LOST_FRAMES, Event, LineCrossing


class ObjectSettings(BaseModel):
    """agent.yaml `objects:`."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    """False: no objects, no object events, no snapshots (frames and counts go on)."""
    confirm_frames: int = Field(default=3, ge=1, le=1000)
    """Frames a track must be on before it is an object ("new"). Higher: fewer objects from flicker
    and false detections; costs objects that are seen only briefly."""
    update_every_s: float = Field(default=5.0, ge=0, le=86400)
    """At most one "update" per object per this many seconds (capture time)."""
    score_margin: float = Field(default=0.05, ge=0, le=1)
    """A better best score is news ("update") only when it beats the last event's by this much."""
    lost_frames: int = Field(default=LOST_FRAMES, ge=1, le=100_000)
    """Frames without the track before the object ends (agent.analytics forgets a track as late)."""
    path_points: int = Field(default=32, ge=2, le=1000)
    """Reference points kept per object, spread over its life."""


class SnapshotHook(Protocol):
    """What agent.snapshots hears from the objects, on the loop's thread."""

    def best(self, obj: TrackedObject, image: np.ndarray) -> None:
        """`obj` has a better best score and box than before, seen on `image`."""

    def end(self, obj: TrackedObject) -> bool:
        """`obj` ended; whether its snapshot will be made (has_snapshot)."""

    def forget(self, object_id: str) -> None:
        """`object_id` ended without ever being an object (no events): drop what is kept for it."""


class ObjectTotals:
    """Object events and snapshots since start, for Prometheus (read off the loop's thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: Counter[tuple[str, str]] = Counter()     # (stream, type)
        self.snapshots: Counter[tuple[str, str]] = Counter()  # (stream, "made" or why dropped)

    def add_events(self, stream: str, events: list[ObjectEventRecord]) -> None:
        with self._lock:
            for e in events:
                self.events[(stream, e.type)] += 1

    def add_snapshot(self, stream: str, outcome: str) -> None:
        with self._lock:
            self.snapshots[(stream, outcome)] += 1

    def snapshot(self) -> tuple[dict, dict]:
        with self._lock:
            return dict(self.events), dict(self.snapshots)


OBJECT_TOTALS = ObjectTotals()
"""The agent's totals: the loop's objects and the snapshot worker add to it, agent.metrics reads it."""


class _Live:
    """A live track: its object and what deciding its events needs."""

    __slots__ = ("obj", "votes", "classes", "last_frame", "announced", "changed", "last_event", "sent_score",
                 "stride", "skipped", "last_point")

    def __init__(self, obj: TrackedObject, frame: int):
        self.obj = obj
        self.votes: dict[str, int] = {}
        self.classes: dict[str, int] = {}
        self.last_frame = frame
        self.announced = self.changed = False
        self.last_event = self.sent_score = 0.0
        self.stride, self.skipped = 1, 0
        self.last_point = (0.0, 0.0, 0.0)


class StreamObjects:
    """One stream's objects (see the module's docstring)."""

    def __init__(self, stream_id: str, settings: ObjectSettings | None = None, *, snapshots: SnapshotHook | None = None,
                 totals: ObjectTotals | None = OBJECT_TOTALS, rng: random.Random | None = None):
        self.stream_id = stream_id
        self.settings = settings or ObjectSettings()
        self.snapshots, self.totals = snapshots, totals
        self.live: dict[int, _Live] = {}
        self.frame = 0
        """Frames this stream has had (its own count: a looping file restarts its frame index)."""
        self._rng = rng or random.Random()

    def update(self, capture_time: float, xyxy: np.ndarray, track_ids: np.ndarray | None, class_ids: np.ndarray,
               labels: list[str], scores: np.ndarray, predicted: np.ndarray, events: Sequence[Event] = (),
               image: np.ndarray | None = None) -> list[ObjectEventRecord]:
        """One frame's tracked rows ((m, 4) boxes in source pixels, (m,) ids, class ids, scores and the
        predicted mask, m labels) and its zone and line `events` -> the object events it causes."""
        self.frame += 1
        out: list[ObjectEventRecord] = []
        if track_ids is not None and len(track_ids):
            out += self._rows(capture_time, xyxy, track_ids, class_ids, labels, scores, predicted, image)
        for event in events:
            self._note(event)
        out += self._updates(capture_time)
        out += self._ended()
        if out and self.totals is not None:
            self.totals.add_events(self.stream_id, out)
        return out

    def end_all(self) -> list[ObjectEventRecord]:
        """End every live object now (the loop is finishing)."""
        out = [self._end(tid) for tid in list(self.live)]
        events = [e for e in out if e is not None]
        if events and self.totals is not None:
            self.totals.add_events(self.stream_id, events)
        return events

    def _start(self, track_id: int, capture_time: float) -> _Live:
        object_id = f"{int(capture_time * 1000)}-{self._rng.getrandbits(24):06x}"
        obj = TrackedObject(object_id, self.stream_id, track_id, "", 0, capture_time, capture_time, 0.0,
                            (0.0, 0.0, 0.0, 0.0))
        live = self.live[track_id] = _Live(obj, self.frame)
        return live

    def _rows(self, capture_time: float, xyxy: np.ndarray, track_ids: np.ndarray, class_ids: np.ndarray,
              labels: list[str], scores: np.ndarray, predicted: np.ndarray,
              image: np.ndarray | None) -> list[ObjectEventRecord]:
        """Each row on its track's object: frames, votes, path, best detected score; "new" on its
        `confirm_frames`-th frame. The common case (same label, no sample due, no better score) is a few
        comparisons; the rest is in helpers."""
        boxes = np.asarray(xyxy, float).reshape(-1, 4)
        bottom = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, boxes[:, 3]], axis=1).tolist()
        detected = (~np.asarray(predicted, bool)).tolist()
        confirm, frame, live_of, out = self.settings.confirm_frames, self.frame, self.live, []
        for tid, cid, label, score, (x, y), seen, i in zip(track_ids.tolist(), class_ids.tolist(), labels,
                                                           scores.tolist(), bottom, detected, range(len(bottom))):
            live = live_of.get(tid) or self._start(tid, capture_time)
            obj, votes = live.obj, live.votes
            obj.frames += 1
            obj.last_seen, live.last_frame = capture_time, frame
            votes[label] = votes.get(label, 0) + 1
            if label != obj.label:
                self._vote(live, label, cid)
            live.last_point = (x, y, capture_time)
            live.skipped += 1
            if live.skipped >= live.stride:
                self._sample(live)
            if seen and score > obj.best_score:
                self._better(live, score, boxes[i].tolist(), image)
            if obj.frames == confirm:
                out.append(self._event("new", live, capture_time))
        return out

    def _vote(self, live: _Live, label: str, class_id: int) -> None:
        """A row with another label than the majority's: it takes over once it has more frames."""
        obj = live.obj
        live.classes[label] = class_id
        if live.votes[label] > live.votes.get(obj.label, 0):
            obj.label, obj.class_id = label, class_id
            live.changed = live.changed or live.announced

    def _better(self, live: _Live, score: float, box: list[float], image: np.ndarray | None) -> None:
        """A detection better than the object's best: its score and box; news past the margin; the snapshots hear."""
        obj = live.obj
        obj.best_score, obj.best_box = score, (box[0], box[1], box[2], box[3])
        if live.announced and score >= live.sent_score + self.settings.score_margin:
            live.changed = True
        if self.snapshots is not None and image is not None:
            self.snapshots.best(obj, image)

    def _sample(self, live: _Live) -> None:
        """The path takes the latest point; past `path_points` every other point goes and sampling halves."""
        path = live.obj.path
        path.append(live.last_point)
        live.skipped = 0
        if len(path) > self.settings.path_points:
            del path[1::2]
            live.stride *= 2

    def _note(self, event: Event) -> None:
        live = self.live.get(event.track_id)
        if live is None:
            return
        obj = live.obj
        if isinstance(event, LineCrossing):
            obj.crossings.append((event.line, event.direction, event.time))
        elif event.kind == "enter" and event.zone not in obj.zones:
            obj.zones.append(event.zone)
        else:
            return
        live.changed = live.changed or live.announced

    def _updates(self, capture_time: float) -> list[ObjectEventRecord]:
        every = self.settings.update_every_s
        return [self._event("update", live, capture_time) for live in self.live.values()
                if live.changed and capture_time - live.last_event >= every]

    def _ended(self) -> list[ObjectEventRecord]:
        cutoff = self.frame - self.settings.lost_frames
        gone = [tid for tid, live in self.live.items() if live.last_frame < cutoff]
        return [e for e in map(self._end, gone) if e is not None]

    def _end(self, track_id: int) -> ObjectEventRecord | None:
        live = self.live.pop(track_id)
        if not live.announced:
            if self.snapshots is not None:
                self.snapshots.forget(live.obj.object_id)
            return None
        live.obj.ended = True
        if self.snapshots is not None:
            live.obj.has_snapshot = self.snapshots.end(live.obj)
        return self._event("end", live, live.obj.last_seen)

    def _event(self, kind: str, live: _Live, capture_time: float) -> ObjectEventRecord:
        """The event with a copy of the object's state (its path ending at its latest point)."""
        live.announced, live.changed = True, False
        live.last_event, live.sent_score = capture_time, live.obj.best_score
        obj = live.obj
        path = list(obj.path)
        if path and path[-1] != live.last_point:
            if len(path) >= self.settings.path_points:
                path.pop()
            path.append(live.last_point)
        return ObjectEventRecord(kind, dataclasses.replace(obj, path=path, zones=list(obj.zones),
                                                           crossings=list(obj.crossings)))
