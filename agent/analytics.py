"""Zone and line events of tracked objects, per stream, on the loop's thread (agent.zones has the shapes).

`StreamEvaluator.update(frame_index, capture_time, xyxy, track_ids, labels)` takes one frame's tracked
rows, detected or predicted alike, and returns what happened on it:

- `ZoneEvent` enter/exit: an object's reference point went more than the zone's margin (a fraction
  of the object's box height, agent.zones) inside (enter) or outside (exit) its polygon; an exit
  carries the dwell (seconds of capture time since the enter), both carry the zone's occupancy
  after the event. A track not seen for `lost_frames`
  frames leaves every zone it was in, at the time it was last seen.
- `LineCrossing`: the point went from more than the margin on one side of a segment to more than
  the margin on the other, and its path between the two (from where it was last beyond the margin)
  crosses the segment itself: passing beyond a segment's end is no crossing. Inside the band a
  point's side does not change, so jitter on the line counts nothing; crossing back counts the
  other direction. A polyline counts once per segment crossed. Direction: agent.zones.Line.

The work is vectorised over the objects: each track has a slot (a row) in every shape's state
arrays; only the rows whose side changed are looked at one by one.

`MinuteCounts` folds events into per-minute `CountRow`s per (stream, zone or line, label,
direction); `TOTALS` keeps the running totals and occupancies the Prometheus endpoint reads
(agent.metrics). The dataclasses are plain, for the outbox and MQTT to carry.
"""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError
from .zones import Line, StreamAnalytics, Zone, reference_points, segments_cross

LOST_FRAMES = 30
"""Frames without a track before it is forgotten (ByteTrack keeps a lost track about as long)."""


@dataclass(frozen=True)
class ZoneEvent:
    stream: str
    zone: str
    kind: str            # "enter" or "exit"
    track_id: int
    label: str
    frame_index: int
    time: float          # capture time, seconds since the epoch
    dwell_s: float       # on exit: seconds inside; 0.0 on enter
    occupancy: int       # objects in the zone after this event


@dataclass(frozen=True)
class LineCrossing:
    stream: str
    line: str
    segment: int         # 0-based segment of the polyline
    direction: str       # "in" (left to right of a->b as seen on screen) or "out"
    track_id: int
    label: str
    frame_index: int
    time: float


Event = ZoneEvent | LineCrossing


@dataclass(frozen=True)
class CountRow:
    """Events of one minute: `minute` is its start (epoch seconds, a multiple of 60); `kind` zone
    (direction "enter") or line (direction "in"/"out")."""
    stream: str
    minute: int
    kind: str
    name: str
    label: str
    direction: str
    count: int


class Totals:
    """Running totals since start, for Prometheus (read off the loop's thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.crossings: Counter[tuple[str, str, str, str]] = Counter()  # (stream, line, label, direction)
        self.entries: Counter[tuple[str, str, str]] = Counter()         # (stream, zone, label)
        self.occupancy: dict[tuple[str, str], int] = {}                   # (stream, zone)

    def add(self, events: list[Event], occupancy: dict[tuple[str, str], int]) -> None:
        with self._lock:
            for e in events:
                if isinstance(e, LineCrossing):
                    self.crossings[(e.stream, e.line, e.label, e.direction)] += 1
                elif e.kind == "enter":
                    self.entries[(e.stream, e.zone, e.label)] += 1
            self.occupancy.update(occupancy)

    def snapshot(self) -> tuple[dict, dict, dict]:
        with self._lock:
            return dict(self.crossings), dict(self.entries), dict(self.occupancy)


TOTALS = Totals()
"""The agent's totals: the loop's evaluators add to it, agent.metrics reads it."""


class MinuteCounts:
    """Events folded into per-minute rows; `take(now)` hands over the minutes that have ended."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[int, str, str, str, str, str]] = Counter()

    def add(self, events: list[Event]) -> None:
        for e in events:
            minute = int(e.time // 60) * 60
            if isinstance(e, LineCrossing):
                self._counts[(minute, e.stream, "line", e.line, e.label, e.direction)] += 1
            elif e.kind == "enter":
                self._counts[(minute, e.stream, "zone", e.zone, e.label, "enter")] += 1

    def take(self, now: float | None = None) -> list[CountRow]:
        """The rows of minutes that ended before `now` (every row when None), removed from here."""
        done = [k for k in self._counts if now is None or k[0] + 60 <= now]
        rows = [CountRow(k[1], k[0], k[2], k[3], k[4], k[5], self._counts.pop(k)) for k in sorted(done)]
        return rows


class _Slots:
    """A row per live track: its id, when it was last seen, its label then."""

    def __init__(self, capacity: int = 64):
        self.row: dict[int, int] = {}
        self.free: list[int] = list(range(capacity - 1, -1, -1))
        self.track = np.full(capacity, -1, np.int64)
        self.last_frame = np.zeros(capacity, np.int64)
        self.last_time = np.zeros(capacity)
        self.label: list[str] = [""] * capacity

    @property
    def capacity(self) -> int:
        return len(self.track)

    def rows(self, track_ids: np.ndarray) -> tuple[np.ndarray, bool]:
        """The rows of `track_ids` (new ones get a free row); whether the arrays grew."""
        grew = False
        rows = np.empty(len(track_ids), np.intp)
        for i, tid in enumerate(track_ids.tolist()):
            row = self.row.get(tid)
            if row is None:
                if not self.free:
                    self._grow()
                    grew = True
                row = self.row[tid] = self.free.pop()
                self.track[row] = tid
            rows[i] = row
        return rows, grew

    def _grow(self) -> None:
        n = self.capacity
        self.track = np.concatenate([self.track, np.full(n, -1, np.int64)])
        self.last_frame = np.concatenate([self.last_frame, np.zeros(n, np.int64)])
        self.last_time = np.concatenate([self.last_time, np.zeros(n)])
        self.label += [""] * n
        self.free = list(range(2 * n - 1, n - 1, -1))

    def release(self, row: int) -> None:
        del self.row[int(self.track[row])]
        self.track[row] = -1
        self.free.append(row)


class _ZoneState:
    def __init__(self, zone: Zone, capacity: int):
        self.zone = zone
        self.inside = np.zeros(capacity, bool)
        self.since = np.zeros(capacity)

    def grow(self, capacity: int) -> None:
        extra = capacity - len(self.inside)
        self.inside = np.concatenate([self.inside, np.zeros(extra, bool)])
        self.since = np.concatenate([self.since, np.zeros(extra)])


class _LineState:
    def __init__(self, line: Line, capacity: int):
        self.line = line
        self.side = np.zeros((capacity, line.segments), np.int8)       # -1 left, +1 right, 0 not yet known
        self.anchor = np.zeros((capacity, line.segments, 2))            # where the side was last confirmed

    def grow(self, capacity: int) -> None:
        extra = capacity - len(self.side)
        self.side = np.concatenate([self.side, np.zeros((extra, self.line.segments), np.int8)])
        self.anchor = np.concatenate([self.anchor, np.zeros((extra, self.line.segments, 2))])


class StreamEvaluator:
    """One stream's zones and lines over its tracked objects (see the module's docstring).

    The geometry is made in source pixels from the first frame's size (`update`'s `size`): a
    ValueError there names the zone or line outside the frame."""

    def __init__(self, stream: str, setting: StreamAnalytics, lost_frames: int = LOST_FRAMES,
                 totals: Totals | None = TOTALS):
        self.stream, self.setting, self.lost_frames, self.totals = stream, setting, lost_frames, totals
        self._slots = _Slots()
        self._zones: list[_ZoneState] = []
        self._lines: list[_LineState] = []
        self._size: tuple[int, int] | None = None

    def occupancy(self) -> dict[str, int]:
        return {z.zone.name: int(np.count_nonzero(z.inside)) for z in self._zones}

    def update(self, frame_index: int, capture_time: float, xyxy: np.ndarray, track_ids: np.ndarray,
               labels: list[str], size: tuple[int, int]) -> list[Event]:
        """One frame's tracked rows ((m, 4) boxes in source pixels, (m,) ids, m labels; `size`: the
        frame's width and height) -> its events, in order: exits of forgotten tracks, zones, lines."""
        if self._size is None:
            self._size = size
            zones, lines = self.setting.geometry(*size)
            self._zones = [_ZoneState(z, self._slots.capacity) for z in zones]
            self._lines = [_LineState(ln, self._slots.capacity) for ln in lines]
        rows, grew = self._slots.rows(np.asarray(track_ids, np.int64))
        if grew:
            for zone in self._zones:
                zone.grow(self._slots.capacity)
            for line in self._lines:
                line.grow(self._slots.capacity)
        slots = self._slots
        slots.last_frame[rows] = frame_index
        slots.last_time[rows] = capture_time
        for row, label in zip(rows.tolist(), labels):
            slots.label[row] = label
        events: list[Event] = self._forget(frame_index)
        codes = _codes(labels)
        xyxy = np.asarray(xyxy, float).reshape(-1, 4)
        points = {"bottom-centre": reference_points(xyxy, "bottom-centre"), "centre": reference_points(xyxy, "centre")}
        heights = xyxy[:, 3] - xyxy[:, 1]
        for zone in self._zones:
            keep = _allowed(codes, zone.zone.labels)
            events += self._zone(zone, frame_index, capture_time, rows[keep], points[zone.zone.point][keep],
                                 heights[keep])
        for line in self._lines:
            keep = _allowed(codes, line.line.labels)
            events += self._line(line, frame_index, capture_time, rows[keep], points[line.line.point][keep],
                                 heights[keep])
        if self.totals is not None:
            self.totals.add(events, {(self.stream, k): v for k, v in self.occupancy().items()})
        return events

    def _forget(self, frame_index: int) -> list[Event]:
        """Tracks not seen for `lost_frames` frames leave their zones (at their last time) and lose their rows."""
        slots = self._slots
        gone = np.nonzero((slots.track >= 0) & (slots.last_frame < frame_index - self.lost_frames))[0]
        events: list[Event] = []
        for row in gone.tolist():
            for zone in self._zones:
                if zone.inside[row]:
                    zone.inside[row] = False
                    events.append(self._zone_event(zone, "exit", row, int(slots.last_frame[row]),
                                                   float(slots.last_time[row])))
            for line in self._lines:
                line.side[row] = 0
            slots.release(row)
        return events

    def _zone(self, state: _ZoneState, frame_index: int, time: float, rows: np.ndarray, points: np.ndarray,
              heights: np.ndarray) -> list[Event]:
        if not len(rows):
            return []
        depth = state.zone.signed_distance(points)
        inside = state.inside[rows]
        margin = state.zone.margin * heights
        entering = rows[~inside & (depth > margin)]
        leaving = rows[inside & (depth < -margin)]
        events: list[Event] = []
        for row in leaving.tolist():
            state.inside[row] = False
            events.append(self._zone_event(state, "exit", row, frame_index, time))
        for row in entering.tolist():
            state.inside[row], state.since[row] = True, time
            events.append(self._zone_event(state, "enter", row, frame_index, time))
        return events

    def _zone_event(self, state: _ZoneState, kind: str, row: int, frame_index: int, time: float) -> ZoneEvent:
        dwell = max(0.0, time - float(state.since[row])) if kind == "exit" else 0.0
        return ZoneEvent(self.stream, state.zone.name, kind, int(self._slots.track[row]), self._slots.label[row],
                         frame_index, time, dwell, int(np.count_nonzero(state.inside)))

    def _line(self, state: _LineState, frame_index: int, time: float, rows: np.ndarray, points: np.ndarray,
              heights: np.ndarray) -> list[Event]:
        if not len(rows):
            return []
        line = state.line
        distance = line.signed_distances(points)                                   # (m, segments)
        margin = (line.margin * heights)[:, None]
        side = np.where(distance > margin, 1, np.where(distance < -margin, -1, 0)).astype(np.int8)
        before = state.side[rows]
        flipped = (side != 0) & (before != 0) & (side != before)
        events: list[Event] = []
        for i, seg in zip(*np.nonzero(flipped)):
            row = int(rows[i])
            if segments_cross(state.anchor[row, seg], points[i], line.points[seg], line.points[seg + 1]):
                events.append(LineCrossing(self.stream, line.name, int(seg), "in" if side[i, seg] > 0 else "out",
                                           int(self._slots.track[row]), self._slots.label[row], frame_index, time))
        confirmed = side != 0
        r, s = np.nonzero(confirmed)
        state.side[rows[r], s] = side[r, s]
        state.anchor[rows[r], s] = points[r]
        return events


def _codes(labels: list[str]) -> dict[str, np.ndarray]:
    """Per label on this frame: a mask of its rows."""
    array = np.asarray(labels, dtype=object)
    return {label: array == label for label in set(labels)}


def _allowed(codes: dict[str, np.ndarray], labels: frozenset[str]) -> np.ndarray:
    """The rows whose label passes a class filter (empty: every row)."""
    n = len(next(iter(codes.values()))) if codes else 0
    if not labels:
        return np.ones(n, bool)
    mask = np.zeros(n, bool)
    for label, rows in codes.items():
        if label in labels:
            mask |= rows
    return mask


class Analytics:
    """Every local stream's evaluator, the minute counts and the recent events (for the outbox and MQTT
    to take), owned by the frame loop. A stream without zones or lines costs nothing."""

    def __init__(self, settings: dict[str, StreamAnalytics], max_events: int = 10_000,
                 totals: Totals | None = TOTALS):
        self.evaluators = {sid: StreamEvaluator(sid, s, totals=totals) for sid, s in settings.items()
                           if s.zones or s.lines}
        self.counts = MinuteCounts()
        self.max_events = max_events
        self.events: list[Event] = []
        self.events_dropped = 0

    def update(self, stream: str, frame_index: int, capture_time: float, image_size: tuple[int, int],
               xyxy: np.ndarray, track_ids: np.ndarray | None, labels: list[str]) -> None:
        evaluator = self.evaluators.get(stream)
        if evaluator is None or track_ids is None:
            return
        try:
            events = evaluator.update(frame_index, capture_time, xyxy, track_ids, labels, image_size)
        except ValueError as err:  # pixel coordinates outside this stream's frames: known at its first frame
            raise ConfigError(f"analytics of stream {stream!r}: {err}") from None
        if events:
            self.counts.add(events)
            self.events += events
            over = len(self.events) - self.max_events
            if over > 0:
                del self.events[:over]
                self.events_dropped += over

    def take_events(self) -> list[Event]:
        events, self.events = self.events, []
        return events
