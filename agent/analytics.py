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
  A track's sides are kept for LINE_MEMORY_FRAMES after it was last seen, so one that comes back
  under its id past the line counts its crossing then; a new track that appears where a lost one
  was heading takes over its sides (agent.handoff), so an object that the tracker lost at the line
  and found again beyond it under a new id counts its crossing once, under the new id.

The work is vectorised over the objects: each track has a slot (a row) in every shape's state
arrays; only the rows whose side changed are looked at one by one.

`MinuteCounts` folds events into per-minute `CountRow`s per (stream, zone or line, label,
direction); `TOTALS` keeps the running totals and occupancies the Prometheus endpoint reads
(agent.metrics). The dataclasses are plain, for the outbox and MQTT to carry.
"""
from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgefleet.common.records import CountRow

from . import handoff as _handoff  # its constants read at call time (the benchmark may change them)
from .errors import ConfigError
from .zones import Line, StreamAnalytics, Zone, reference_points, segments_cross

LOST_FRAMES = 30
"""Frames without a track before it leaves its zones (ByteTrack keeps a lost track about as long)."""
LINE_MEMORY_FRAMES = 300
"""Frames a track's sides of the lines are kept after it was last seen: ByteTrack may give a track
back its id after its published rows stopped for longer than LOST_FRAMES (its weak detections are
tracked, not published), and a new track may take over its sides (agent.handoff). Ids are not reused."""

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


class EventHub:
    """Who hears each tick's events as they happen (agent.mqtt), on the loop's thread: a listener
    must not block."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[str, list[Event], dict[str, int]], None]] = []

    def subscribe(self, listener: Callable[[str, list[Event], dict[str, int]], None]) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[str, list[Event], dict[str, int]], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def publish(self, stream: str, events: list[Event], occupancy: dict[str, int]) -> None:
        """`listener(stream, events, occupancy)` for each listener (`occupancy`: zone -> objects in it now)."""
        for listener in list(self._listeners):
            listener(stream, events, occupancy)


HUB = EventHub()
"""The agent's event hub: the loop's `Analytics` publishes to it, the MQTT publisher listens."""


class MinuteCounts:
    """Events folded into per-minute rows; `take(now)` hands over the minutes that have ended. Rows
    nobody takes are kept up to `max_rows`, then the oldest go (counted in `dropped`)."""

    def __init__(self, max_rows: int = 100_000) -> None:
        self._counts: Counter[tuple[int, str, str, str, str, str]] = Counter()
        self.max_rows = max_rows
        self.dropped = 0

    def add(self, events: list[Event]) -> None:
        for e in events:
            minute = int(e.time // 60) * 60
            if isinstance(e, LineCrossing):
                self._counts[(minute, e.stream, "line", e.line, e.label, e.direction)] += 1
            elif e.kind == "enter":
                self._counts[(minute, e.stream, "zone", e.zone, e.label, "enter")] += 1
        if len(self._counts) > self.max_rows:
            for key in sorted(self._counts)[:len(self._counts) - self.max_rows]:
                del self._counts[key]
                self.dropped += 1

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
        self.motion = _handoff.Motion(capacity)

    @property
    def capacity(self) -> int:
        return len(self.track)

    def rows(self, track_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """The rows of `track_ids` (new ones get a free row); which are new; whether the arrays grew."""
        grew = False
        rows = np.empty(len(track_ids), np.intp)
        new = np.zeros(len(track_ids), bool)
        for i, tid in enumerate(track_ids.tolist()):
            row = self.row.get(tid)
            if row is None:
                if not self.free:
                    self._grow()
                    grew = True
                row = self.row[tid] = self.free.pop()
                self.track[row] = tid
                new[i] = True
            rows[i] = row
        return rows, new, grew

    def _grow(self) -> None:
        n = self.capacity
        self.track = np.concatenate([self.track, np.full(n, -1, np.int64)])
        self.last_frame = np.concatenate([self.last_frame, np.zeros(n, np.int64)])
        self.last_time = np.concatenate([self.last_time, np.zeros(n)])
        self.motion.grow(2 * n)
        self.label += [""] * n
        self.free = list(range(2 * n - 1, n - 1, -1))

    def release(self, row: int) -> None:
        del self.row[int(self.track[row])]
        self.track[row] = -1
        self.free.append(row)


def _grown(array: np.ndarray, capacity: int) -> np.ndarray:
    """`array` with zero rows added up to `capacity` rows."""
    return np.concatenate([array, np.zeros((capacity - len(array), *array.shape[1:]), array.dtype)])


def _point_y(points: dict[str, np.ndarray], centre: np.ndarray) -> np.ndarray:
    """(m, k): each object's reference y for k columns, each column's point bottom-centre or centre."""
    bottom = points["bottom-centre"][:, 1:2]
    return np.where(centre[None], points["centre"][:, 1:2], bottom) if centre.any() else bottom


class _Zones:
    """Every zone of a stream, their edges side by side (one pass for all), and per track row: inside, since when."""

    def __init__(self, zones: list[Zone], capacity: int):
        self.zones = zones
        self.starts = np.cumsum([0] + [len(z.polygon) for z in zones[:-1]])
        self.a = np.concatenate([z.polygon for z in zones]) if zones else np.zeros((0, 2))
        self.d = np.concatenate([np.roll(z.polygon, -1, axis=0) - z.polygon for z in zones]) if zones else self.a
        self.length2 = np.maximum((self.d * self.d).sum(-1), 1e-12)
        self.slope = self.d[:, 0] / np.where(self.d[:, 1] == 0, 1.0, self.d[:, 1])
        edges = [len(z.polygon) for z in zones]
        self.edge_centre = np.repeat([z.point == "centre" for z in zones], edges).astype(bool)
        self.margin = np.array([z.margin for z in zones])
        self.inside = np.zeros((capacity, len(zones)), bool)
        self.since = np.zeros((capacity, len(zones)))

    def grow(self, capacity: int) -> None:
        self.inside, self.since = _grown(self.inside, capacity), _grown(self.since, capacity)

    def depth(self, points: dict[str, np.ndarray]) -> np.ndarray:
        """(m, zones): each object's signed distance to each zone's boundary, positive inside."""
        rx = points["centre"][:, 0:1] - self.a[None, :, 0]
        ry = _point_y(points, self.edge_centre) - self.a[None, :, 1]
        straddles = (ry < 0) != (ry < self.d[None, :, 1])
        crossings = (straddles & (rx < ry * self.slope[None])).astype(np.int32)
        inside = np.add.reduceat(crossings, self.starts, axis=1) % 2 == 1
        t = np.clip((rx * self.d[None, :, 0] + ry * self.d[None, :, 1]) / self.length2[None], 0.0, 1.0)
        distance2 = (rx - t * self.d[None, :, 0]) ** 2 + (ry - t * self.d[None, :, 1]) ** 2
        distance = np.sqrt(np.minimum.reduceat(distance2, self.starts, axis=1))
        return np.where(inside, distance, -distance)


class _Lines:
    """Every segment of every line of a stream side by side, and per track row and segment: the side it
    was last confirmed on (-1 left, +1 right, 0 not yet known) and where."""

    def __init__(self, lines: list[Line], capacity: int):
        self.lines = lines
        self.line_of = np.repeat(np.arange(len(lines)), [ln.segments for ln in lines])
        self.index = np.concatenate([np.arange(ln.segments) for ln in lines]) if lines else np.zeros(0, int)
        self.a = np.concatenate([ln.points[:-1] for ln in lines]) if lines else np.zeros((0, 2))
        self.b = np.concatenate([ln.points[1:] for ln in lines]) if lines else np.zeros((0, 2))
        d = self.b - self.a
        self.unit = d / np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-12)[:, None]
        self.centre = np.array([lines[i].point == "centre" for i in self.line_of], bool)
        self.margin = np.array([lines[i].margin for i in self.line_of])
        self.side = np.zeros((capacity, len(self.a)), np.int8)
        self.anchor = np.zeros((capacity, len(self.a), 2))

    def grow(self, capacity: int) -> None:
        self.side, self.anchor = _grown(self.side, capacity), _grown(self.anchor, capacity)

    def sides(self, x: np.ndarray, y: np.ndarray, heights: np.ndarray) -> np.ndarray:
        """(m, segments): the side each object's point is on, beyond the margin (0: within it)."""
        distance = self.unit[None, :, 0] * (y - self.a[None, :, 1]) - self.unit[None, :, 1] * (x - self.a[None, :, 0])
        margin = heights[:, None] * self.margin[None]
        return np.where(distance > margin, 1, np.where(distance < -margin, -1, 0)).astype(np.int8)


class StreamEvaluator:
    """One stream's zones and lines over its tracked objects (see the module's docstring).

    The geometry is made in source pixels from the first frame's size (`update`'s `size`): a
    ValueError there names the zone or line outside the frame."""

    def __init__(self, stream: str, setting: StreamAnalytics, lost_frames: int = LOST_FRAMES,
                 totals: Totals | None = TOTALS, handoff: bool = True, line_memory: int = LINE_MEMORY_FRAMES):
        self.stream, self.setting, self.lost_frames, self.totals = stream, setting, lost_frames, totals
        self.memory = max(lost_frames, line_memory)
        self.handoff = handoff
        self._slots = _Slots()
        self._zones = _Zones([], 0)
        self._lines = _Lines([], 0)
        self._size: tuple[int, int] | None = None

    def occupancy(self) -> dict[str, int]:
        counts = np.count_nonzero(self._zones.inside, axis=0)
        return {z.name: int(n) for z, n in zip(self._zones.zones, counts)}

    def update(self, frame_index: int, capture_time: float, xyxy: np.ndarray, track_ids: np.ndarray,
               labels: list[str], size: tuple[int, int]) -> list[Event]:
        """One frame's tracked rows ((m, 4) boxes in source pixels, (m,) ids, m labels; `size`: the
        frame's width and height) -> its events, in order: exits of forgotten tracks, zones, lines."""
        if self._size is None:
            self._size = size
            zones, lines = self.setting.geometry(*size)
            self._zones, self._lines = _Zones(zones, self._slots.capacity), _Lines(lines, self._slots.capacity)
        slots = self._slots
        rows, new, grew = slots.rows(np.asarray(track_ids, np.int64))
        if grew:
            self._zones.grow(slots.capacity)
            self._lines.grow(slots.capacity)
        xyxy = np.asarray(xyxy, float).reshape(-1, 4)
        fresh = rows[new]
        slots.motion.move(rows, fresh, new, xyxy, frame_index)
        if self.handoff and len(fresh) and (self._lines.lines or self._zones.zones):
            self._hand_off(frame_index, fresh)
        slots.last_frame[rows] = frame_index
        slots.last_time[rows] = capture_time
        for row, label in zip(rows.tolist(), labels):
            slots.label[row] = label
        events: list[Event] = self._forget(frame_index)
        if len(rows):
            points = {"bottom-centre": reference_points(xyxy, "bottom-centre"),
                      "centre": reference_points(xyxy, "centre")}
            heights = xyxy[:, 3] - xyxy[:, 1]
            if self._zones.zones:
                allowed = _filters(labels, self._zones.zones)
                events += self._zone_events(frame_index, capture_time, rows, points, heights, allowed)
            if self._lines.lines:
                allowed = _filters(labels, self._lines.lines)
                if isinstance(allowed, np.ndarray):
                    allowed = allowed[:, self._lines.line_of]
                events += self._crossings(frame_index, capture_time, rows, points, heights, allowed)
        if self.totals is not None:
            self.totals.add(events, {(self.stream, k): v for k, v in self.occupancy().items()})
        return events

    def _forget(self, frame_index: int) -> list[Event]:
        """Tracks not seen for `lost_frames` frames leave their zones (at their last time); for `memory`
        frames, their sides of the lines too, and their rows."""
        slots, inside = self._slots, self._zones.inside
        live = slots.track >= 0
        lost = live & (slots.last_frame < frame_index - self.lost_frames)
        events: list[Event] = []
        for row in (np.nonzero(lost & inside.any(axis=1))[0].tolist() if inside.shape[1] and lost.any() else []):
            for z in np.nonzero(inside[row])[0].tolist():
                inside[row, z] = False
                events.append(self._zone_event(z, "exit", row, int(slots.last_frame[row]),
                                               float(slots.last_time[row])))
        for row in np.nonzero(live & (slots.last_frame < frame_index - self.memory))[0].tolist():
            self._lines.side[row] = 0
            slots.release(row)
        return events

    def _hand_off(self, frame_index: int, new: np.ndarray) -> None:
        """New tracks take over the sides and zones of lost tracks whose motion brings them to where the
        new one is now (nearest first, one to one): the tracker gave an object a new id after losing it
        (behind a pillar, in a crowd). Its crossing counts when it is seen beyond the line, and it is
        still in the zones the lost track was in (no second entry; its visit's dwell goes on from the
        first entry, and the exit comes under the new id). The lost track gives them up, so that it
        counts nothing twice should it come back, and leaves its zones without an exit of its own.
        Zones go over only while the lost track is still in them (`lost_frames`)."""
        slots, lines, zones = self._slots, self._lines, self._zones
        last = slots.last_frame
        holds = (lines.side != 0).any(axis=1) | zones.inside.any(axis=1)
        lost = np.nonzero((slots.track >= 0) & (last <= frame_index - _handoff.HANDOFF_MIN_GAP)
                          & (last >= frame_index - _handoff.HANDOFF_FRAMES) & holds)[0]
        if not len(lost):
            return
        for row, old in slots.motion.pairs(new, lost, (frame_index - slots.last_frame[lost]).astype(float)):
            lines.side[row], lines.anchor[row] = lines.side[old], lines.anchor[old]
            lines.side[old] = 0
            zones.inside[row], zones.since[row] = zones.inside[old], zones.since[old]
            zones.inside[old] = False
            slots.motion.inherit(row, old)

    def _zone_events(self, frame_index: int, time: float, rows: np.ndarray, points: dict[str, np.ndarray],
                     heights: np.ndarray, allowed: np.ndarray | bool) -> list[Event]:
        zones = self._zones
        depth = zones.depth(points)
        margin = heights[:, None] * zones.margin[None]
        inside = zones.inside[rows]
        events: list[Event] = []
        for kind, (i, z) in [("exit", np.nonzero(allowed & inside & (depth < -margin))),
                             ("enter", np.nonzero(allowed & ~inside & (depth > margin)))]:
            for row, zone in zip(rows[i].tolist(), z.tolist()):
                zones.inside[row, zone] = kind == "enter"
                if kind == "enter":
                    zones.since[row, zone] = time
                events.append(self._zone_event(zone, kind, row, frame_index, time))
        return events

    def _zone_event(self, zone: int, kind: str, row: int, frame_index: int, time: float) -> ZoneEvent:
        zones = self._zones
        dwell = max(0.0, time - float(zones.since[row, zone])) if kind == "exit" else 0.0
        return ZoneEvent(self.stream, zones.zones[zone].name, kind, int(self._slots.track[row]),
                         self._slots.label[row], frame_index, time, dwell, int(np.count_nonzero(zones.inside[:, zone])))

    def _crossings(self, frame_index: int, time: float, rows: np.ndarray, points: dict[str, np.ndarray],
                   heights: np.ndarray, allowed: np.ndarray | bool) -> list[Event]:
        lines = self._lines
        x = points["centre"][:, 0:1]
        y = _point_y(points, lines.centre)
        side = lines.sides(x, y, heights)
        if allowed is not True:
            side = np.where(allowed, side, 0).astype(np.int8)
        before = lines.side[rows]
        events: list[Event] = []
        for i, seg in zip(*np.nonzero((side != 0) & (before != 0) & (side != before))):
            row = int(rows[i])
            here = np.array([x[i, 0], y[i, seg if y.shape[1] > 1 else 0]])
            if segments_cross(lines.anchor[row, seg], here, lines.a[seg], lines.b[seg]):
                line = lines.lines[lines.line_of[seg]]
                events.append(LineCrossing(self.stream, line.name, int(lines.index[seg]),
                                           "in" if side[i, seg] > 0 else "out", int(self._slots.track[row]),
                                           self._slots.label[row], frame_index, time))
        r, s = np.nonzero(side)
        lines.side[rows[r], s] = side[r, s]
        lines.anchor[rows[r], s, 0] = x[r, 0]
        lines.anchor[rows[r], s, 1] = y[r, s if y.shape[1] > 1 else 0]
        return events


def _filters(labels: list[str], shapes: list[Zone] | list[Line]) -> np.ndarray | bool:
    """(m, shapes): the rows each shape's class filter lets through; True when no shape has a filter."""
    if not any(shape.labels for shape in shapes):
        return True
    codes = _codes(labels)
    return np.stack([_allowed(codes, shape.labels) for shape in shapes], axis=1)


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
                 totals: Totals | None = TOTALS, hub: EventHub | None = HUB):
        self.evaluators = {sid: StreamEvaluator(sid, s, totals=totals) for sid, s in settings.items()
                           if s.zones or s.lines}
        self.counts = MinuteCounts()
        self.hub = hub
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
            if self.hub is not None:
                self.hub.publish(stream, events, evaluator.occupancy())
            self.counts.add(events)
            self.events += events
            over = len(self.events) - self.max_events
            if over > 0:
                del self.events[:over]
                self.events_dropped += over

    def take_events(self) -> list[Event]:
        events, self.events = self.events, []
        return events
