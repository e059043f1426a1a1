"""Zones and lines of a stream: their settings (`StreamAnalytics`, in agent.yaml's `analytics:`), checked
once, and their geometry in source pixels (`Zone`, `Line`), which agent.analytics evaluates.

A zone is a simple polygon (at least 3 distinct points, no edge crossing another, some area); a line is
a polyline of at least 2 points, each segment of non-zero length. Coordinates are all fractions of the
frame (`units: fraction`, the default: 0..1, x from the left, y from the top) or all source pixels
(`units: pixels`): the key says which, so that a 1x1 pixel corner is never read as the whole frame.
Fractions are checked here; pixels against the frame size when the stream's first frame arrives
(`StreamAnalytics.geometry`), since only then is the size known.

Each zone and line has a class filter (`labels`, empty: every class), the object's reference point
(`point`: bottom-centre, the default, where a person or car touches the ground; or centre), and a
`margin`: how far the point must be beyond a line or a zone's edge for its side to change, as a
fraction of the object's own box height (a detector's box jitter grows with the box), so that a
point jittering on the line counts nothing. scripts/bench/analytics.py measured the default.

Plain Python and numpy, no shapely: the checks are segment intersections over a few dozen points, and
the per-frame work (agent.analytics) is vectorised over the objects with numpy.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

Units = Literal["fraction", "pixels"]
RefPoint = Literal["bottom-centre", "centre"]
Point = tuple[float, float]

DEFAULT_MARGIN = 0.05
"""The default hysteresis band: 5 % of the object's box height (5 px for a 100 px tall person)."""


class Shape(BaseModel):
    """What zones and lines share: their class filter, reference point and hysteresis margin."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: list[str] = Field(default_factory=list)
    point: RefPoint = "bottom-centre"
    margin: float = Field(DEFAULT_MARGIN, ge=0, le=1)


class ZoneSetting(Shape):
    polygon: list[Point]


class LineSetting(Shape):
    points: list[Point]


class StreamAnalytics(BaseModel):
    """One stream's zones and lines (agent.yaml: `analytics: {cam0: {units: …, zones: …, lines: …}}`)."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    units: Units = "fraction"
    zones: dict[str, ZoneSetting] = Field(default_factory=dict)
    lines: dict[str, LineSetting] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> StreamAnalytics:
        for name, zone in self.zones.items():
            problem = polygon_problem(zone.polygon) or self._units_problem(zone.polygon)
            if problem:
                raise ValueError(f"zone {name!r}: {problem}")
        for name, line in self.lines.items():
            problem = polyline_problem(line.points) or self._units_problem(line.points)
            if problem:
                raise ValueError(f"line {name!r}: {problem}")
        return self

    def _units_problem(self, points: list[Point]) -> str | None:
        bound = 1.0 if self.units == "fraction" else float("inf")
        for x, y in points:
            if not (0 <= x <= bound and 0 <= y <= bound):
                where = "outside the frame (fractions are 0..1)" if self.units == "fraction" else "negative"
                return f"point ({x:g}, {y:g}) is {where}"
        return None

    def geometry(self, width: int, height: int) -> tuple[list[Zone], list[Line]]:
        """The zones and lines in source pixels for a `width` x `height` frame; ValueError naming the
        zone or line whose pixel coordinates fall outside it."""
        scale = np.array([width, height], float) if self.units == "fraction" else np.ones(2)
        zones, lines = [], []
        for kind, name, setting, points in self._shapes():
            xy = np.asarray(points, float) * scale
            outside = [(x, y) for x, y in xy if not (0 <= x <= width and 0 <= y <= height)]
            if outside:
                raise ValueError(f"{kind} {name!r}: point ({outside[0][0]:g}, {outside[0][1]:g}) is outside the "
                                 f"{width}x{height} frame")
            filters = frozenset(setting.labels)
            if kind == "zone":
                zones.append(Zone(name, xy, filters, setting.point, setting.margin))
            else:
                lines.append(Line(name, xy, filters, setting.point, setting.margin))
        return zones, lines

    def _shapes(self) -> list[tuple[str, str, Shape, list[Point]]]:
        return ([("zone", n, z, z.polygon) for n, z in self.zones.items()]
                + [("line", n, ln, ln.points) for n, ln in self.lines.items()])


@dataclass(frozen=True)
class Zone:
    """A zone in source pixels: its polygon (n, 2), class filter, reference point and margin (of box heights)."""
    name: str
    polygon: np.ndarray
    labels: frozenset[str]
    point: RefPoint
    margin: float

    @cached_property
    def _edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per edge: its start, its vector, its squared length, and its vector's dy with 0 as 1 (no division by 0)."""
        a = self.polygon
        d = np.roll(a, -1, axis=0) - a
        return a, d, np.maximum((d * d).sum(-1), 1e-12), np.where(d[:, 1] == 0, 1.0, d[:, 1])

    def signed_distance(self, points: np.ndarray) -> np.ndarray:
        """Per point (m, 2): its distance to the polygon's boundary, positive inside, negative outside
        (`contains` and `boundary_distance` in one pass over the point-to-edge vectors)."""
        a, d, length2, dy = self._edges
        rx = points[:, 0:1] - a[None, :, 0]
        ry = points[:, 1:2] - a[None, :, 1]
        straddles = (ry < 0) != (ry < d[None, :, 1])
        inside = np.count_nonzero(straddles & (rx < ry * (d[:, 0] / dy)[None]), axis=1) % 2 == 1
        t = np.clip((rx * d[None, :, 0] + ry * d[None, :, 1]) / length2[None], 0.0, 1.0)
        distance = np.sqrt(((rx - t * d[None, :, 0]) ** 2 + (ry - t * d[None, :, 1]) ** 2).min(axis=1))
        return np.where(inside, distance, -distance)


@dataclass(frozen=True)
class Line:
    """A polyline in source pixels: its points (n, 2), class filter, reference point and margin (of box heights).

    Segment i runs from point i to point i+1. A point's side of it is the sign of the cross product
    (b - a) x (p - a): in image coordinates (y down) positive is on the right of a->b as seen on screen.
    Crossing from left to right is `in`, right to left `out`: for a line drawn left to right, moving
    down the picture is `in`."""
    name: str
    points: np.ndarray
    labels: frozenset[str]
    point: RefPoint
    margin: float

    @property
    def segments(self) -> int:
        return len(self.points) - 1

    @cached_property
    def _unit(self) -> tuple[np.ndarray, np.ndarray]:
        """Per segment: its start and its unit vector."""
        d = self.points[1:] - self.points[:-1]
        return self.points[:-1], d / np.hypot(d[:, 0], d[:, 1])[:, None]

    def signed_distances(self, points: np.ndarray) -> np.ndarray:
        """(m, segments): each point's signed distance to each segment's line, positive on its right."""
        a, u = self._unit
        return u[None, :, 0] * (points[:, 1:2] - a[None, :, 1]) - u[None, :, 1] * (points[:, 0:1] - a[None, :, 0])


def reference_points(xyxy: np.ndarray, point: RefPoint) -> np.ndarray:
    """The (m, 2) reference points of (m, 4) boxes: bottom-centre or centre."""
    x = (xyxy[:, 0] + xyxy[:, 2]) / 2
    y = xyxy[:, 3] if point == "bottom-centre" else (xyxy[:, 1] + xyxy[:, 3]) / 2
    return np.stack([x, y], axis=1)


def contains(polygon: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Per point: inside the polygon (even-odd ray casting, vectorised over points and edges)."""
    a, b = polygon, np.roll(polygon, -1, axis=0)
    px, py = points[:, 0:1], points[:, 1:2]
    straddles = (a[None, :, 1] > py) != (b[None, :, 1] > py)
    dy = np.where(b[:, 1] == a[:, 1], 1.0, b[:, 1] - a[:, 1])
    x_at = a[None, :, 0] + (py - a[None, :, 1]) * (b[None, :, 0] - a[None, :, 0]) / dy[None, :]
    return np.count_nonzero(straddles & (px < x_at), axis=1) % 2 == 1


def boundary_distance(polygon: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Per point: the distance to the nearest edge of the closed polygon."""
    a, b = polygon, np.roll(polygon, -1, axis=0)
    d = b - a
    rel = points[:, None, :] - a[None, :, :]
    t = np.clip((rel * d[None]).sum(-1) / np.maximum((d * d).sum(-1), 1e-12)[None], 0.0, 1.0)
    nearest = rel - t[..., None] * d[None]
    return np.sqrt((nearest ** 2).sum(-1)).min(axis=1)


def segments_cross(p1: np.ndarray, p2: np.ndarray, q1: np.ndarray, q2: np.ndarray) -> bool:
    """Whether segments p1-p2 and q1-q2 share a point (touching counts)."""
    def orient(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
        return float((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))

    def on(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> bool:  # c on segment a-b, given collinear
        return min(a[0], b[0]) <= c[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= c[1] <= max(a[1], b[1])

    o1, o2, o3, o4 = orient(p1, p2, q1), orient(p1, p2, q2), orient(q1, q2, p1), orient(q1, q2, p2)
    if ((o1 > 0) != (o2 > 0) and o1 != 0 and o2 != 0) and ((o3 > 0) != (o4 > 0) and o3 != 0 and o4 != 0):
        return True
    return ((o1 == 0 and on(p1, p2, q1)) or (o2 == 0 and on(p1, p2, q2))
            or (o3 == 0 and on(q1, q2, p1)) or (o4 == 0 and on(q1, q2, p2)))


def polygon_problem(points: list[Point]) -> str | None:
    """Why `points` is not a simple polygon, or None."""
    xy = np.asarray(points, float).reshape(-1, 2)
    if len({(x, y) for x, y in points}) < 3:
        return f"a polygon needs at least 3 distinct points, got {len({(x, y) for x, y in points})}"
    if any((xy[i] == xy[(i + 1) % len(xy)]).all() for i in range(len(xy))):
        return "has a repeated consecutive point (a zero-length edge)"
    n = len(xy)
    for i in range(n):
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue  # neighbouring edges share a point
            if segments_cross(xy[i], xy[(i + 1) % n], xy[j], xy[(j + 1) % n]):
                return f"is self-intersecting (edge {i + 1} crosses edge {j + 1})"
    area = 0.5 * abs(float(np.dot(xy[:, 0], np.roll(xy[:, 1], -1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], -1))))
    if area == 0:
        return "has no area (its points are collinear)"
    return None


def polyline_problem(points: list[Point]) -> str | None:
    """Why `points` is not a usable line or polyline, or None."""
    if len(points) < 2:
        return f"a line needs at least 2 points, got {len(points)}"
    for i in range(len(points) - 1):
        if points[i] == points[i + 1]:
            return f"segment {i + 1} has zero length ({points[i][0]:g}, {points[i][1]:g} twice)"
    return None
