"""Synthetic tracking scenes with exact ground truth, and the detections a detector would give.

A walkway seen from the side: people-sized boxes walk left or right (heading jitter, so paths
cross), enter at one edge and leave at the other, pass behind each other (the box whose bottom
edge is lower is in front) and behind a few pillars. Everything is drawn from one seeded
generator, so a `SceneSpec` always gives the same scene.

Ground truth per frame: every object whose box is at least `min_visibility` visible (not
hidden by closer objects, pillars or the frame edge), its box clipped to the frame.
Detections per frame, at the rates in the spec:
- a ground-truth object is missed with `miss_rate` (more often when it is half hidden);
- its box gets Gaussian noise of `box_noise` x its width / height on every edge;
- its score is high (0.55..0.95), or low (0.15..0.5) with `weak_rate` and whenever it is less
  than 60 % visible: the weak boxes that ByteTrack's second association is for;
- `false_positive_rate` x (objects in view) clutter boxes per frame (Poisson), anywhere, with
  scores 0.1..0.7 (some of them high enough to start tracks).
Rows come sorted by score, as after NMS. Everything is class 0.

Zones and lines (`LINES`, `ZONES`, `analytics_layout`): five lines across the walkway and five zones
along it; `true_events` gives the exact crossings and visits of a scene's ground truth.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edgefleet.models.detections import Detections


@dataclass(frozen=True)
class SceneSpec:
    objects: int
    """Objects in view on average (new ones enter as others leave)."""
    frames: int = 300
    seed: int = 0
    width: int = 1920
    height: int = 1080
    pillars: int = 3
    box_noise: float = 0.04
    miss_rate: float = 0.08
    weak_rate: float = 0.15
    false_positive_rate: float = 0.05
    min_visibility: float = 0.25


@dataclass
class Scene:
    spec: SceneSpec
    gt_ids: list[np.ndarray]
    """Per frame: ids (int64) of the ground-truth objects."""
    gt_xyxy: list[np.ndarray]
    """Per frame: their boxes (float32, clipped to the frame)."""
    detections: list[Detections]
    """Per frame: what the detector reports (no tracker_id)."""
    stats: dict

    def __len__(self) -> int:
        return len(self.gt_ids)


class _Walkers:
    """The objects alive now, as columns."""

    def __init__(self) -> None:
        self.id = np.zeros(0, np.int64)
        self.centre = np.zeros((0, 2))
        self.velocity = np.zeros((0, 2))
        self.size = np.zeros((0, 2))  # w, h
        self.speed = np.zeros(0)

    def add(self, ids, centre, velocity, size, speed) -> None:
        self.id = np.concatenate([self.id, ids])
        self.centre = np.concatenate([self.centre, centre])
        self.velocity = np.concatenate([self.velocity, velocity])
        self.size = np.concatenate([self.size, size])
        self.speed = np.concatenate([self.speed, speed])

    def keep(self, mask: np.ndarray) -> None:
        self.id, self.centre, self.velocity = self.id[mask], self.centre[mask], self.velocity[mask]
        self.size, self.speed = self.size[mask], self.speed[mask]

    def xyxy(self) -> np.ndarray:
        return np.concatenate([self.centre - self.size / 2, self.centre + self.size / 2], axis=1)


def make_scene(spec: SceneSpec) -> Scene:
    rng = np.random.default_rng(spec.seed)
    scale = float(np.clip(np.sqrt(20 / spec.objects), 0.4, 1.0))  # crowds are seen from further away
    frame_box = np.array([0, 0, spec.width, spec.height], np.float64)
    pillar_w = 90 * scale
    px = rng.uniform(0.1 * spec.width, 0.9 * spec.width - pillar_w, spec.pillars)
    pillars = np.c_[px, np.full(spec.pillars, 0.05 * spec.height), px + pillar_w,
                    np.full(spec.pillars, 0.95 * spec.height)]
    walkers, next_id = _Walkers(), 1

    def spawn(k: int, at_edge: bool) -> None:
        nonlocal next_id
        h = rng.uniform(60, 180, k) * scale
        size = np.c_[h * rng.uniform(0.35, 0.5, k), h]
        speed = h * rng.uniform(0.01, 0.04, k)  # px per frame, 0.6 .. 7
        heading = rng.choice([-1.0, 1.0], k)
        angle = rng.normal(0, 0.25, k)
        velocity = np.c_[heading * speed * np.cos(angle), speed * np.sin(angle)]
        if at_edge:
            x = np.where(heading > 0, -size[:, 0] / 2, spec.width + size[:, 0] / 2)
        else:
            x = rng.uniform(0, spec.width, k)
        y = rng.uniform(h / 2, spec.height - h / 2)
        walkers.add(np.arange(next_id, next_id + k), np.c_[x, y], velocity, size, speed)
        next_id += k

    spawn(spec.objects, at_edge=False)
    gt_ids, gt_xyxy, detections = [], [], []
    stats = {"gt_boxes": 0, "detections": 0, "false_positives": 0, "weak_detections": 0, "missed": 0,
             "occluded_frames": 0}
    for _ in range(spec.frames):
        # move: heading jitter keeps the speed, walkers turn back at the top and bottom
        walkers.velocity += rng.normal(0, 0.03, walkers.velocity.shape) * walkers.speed[:, None]
        norm = np.linalg.norm(walkers.velocity, axis=1, keepdims=True)
        walkers.velocity *= walkers.speed[:, None] / np.maximum(norm, 1e-9)
        walkers.centre += walkers.velocity
        half_h = walkers.size[:, 1] / 2
        off = (walkers.centre[:, 1] < half_h) | (walkers.centre[:, 1] > spec.height - half_h)
        walkers.velocity[off, 1] *= -1
        xyxy = walkers.xyxy()
        inside = (xyxy[:, 2] > 0) & (xyxy[:, 0] < spec.width)
        walkers.keep(inside)
        spawn(rng.poisson(max(spec.objects - len(walkers.id), 0) * 0.2), at_edge=True)

        xyxy = walkers.xyxy()
        visibility = _visibility(xyxy, pillars, frame_box)
        shown = visibility >= spec.min_visibility
        stats["occluded_frames"] += int(((visibility < spec.min_visibility) & _in_frame(xyxy, frame_box)).sum())
        boxes = _clip(xyxy[shown], frame_box)
        gt_ids.append(walkers.id[shown])
        gt_xyxy.append(boxes.astype(np.float32))
        detections.append(_detect(rng, spec, boxes, visibility[shown], walkers.size[shown], frame_box, stats))
        stats["gt_boxes"] += int(shown.sum())
    stats["gt_tracks"] = int(len(np.unique(np.concatenate(gt_ids)))) if gt_ids else 0
    stats["mean_objects_per_frame"] = round(stats["gt_boxes"] / max(spec.frames, 1), 1)
    return Scene(spec, gt_ids, gt_xyxy, detections, stats)


def _detect(rng, spec: SceneSpec, boxes: np.ndarray, visibility: np.ndarray, size: np.ndarray,
            frame_box: np.ndarray, stats: dict) -> Detections:
    n = len(boxes)
    hit_rate = (1 - spec.miss_rate) * np.where(visibility >= 0.5, 1.0, 0.6)
    hit = rng.random(n) < hit_rate
    weak = (rng.random(n) < spec.weak_rate) | (visibility < 0.6)
    score = np.where(weak, rng.uniform(0.15, 0.5, n), rng.uniform(0.55, 0.95, n))[hit]
    noisy = boxes[hit] + rng.normal(0, spec.box_noise, (int(hit.sum()), 4)) * np.tile(size[hit], 2)
    clutter = rng.poisson(spec.false_positive_rate * n)
    h = rng.uniform(60, 180, clutter) * float(np.clip(np.sqrt(20 / spec.objects), 0.4, 1.0))
    w = h * rng.uniform(0.35, 0.5, clutter)
    x, y = rng.uniform(0, spec.width - w), rng.uniform(0, spec.height - h)
    xyxy = np.concatenate([noisy, np.c_[x, y, x + w, y + h]])
    score = np.concatenate([score, rng.uniform(0.1, 0.7, clutter)])
    xyxy = _clip(xyxy, frame_box)
    ok = (xyxy[:, 2] - xyxy[:, 0] > 1) & (xyxy[:, 3] - xyxy[:, 1] > 1)
    order = np.argsort(-score[ok], kind="stable")
    stats["detections"] += int(ok.sum())
    stats["false_positives"] += int(clutter)
    stats["weak_detections"] += int((weak & hit).sum())
    stats["missed"] += int((~hit).sum())
    return Detections(xyxy[ok][order], score[ok][order], np.zeros(int(ok.sum()), np.int32))


def _visibility(xyxy: np.ndarray, pillars: np.ndarray, frame_box: np.ndarray) -> np.ndarray:
    """Fraction of each box not hidden by closer boxes (lower bottom edge), pillars or the frame
    edge. Overlapping occluders are summed, so crowds count as a little more hidden than they are."""
    area = (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])
    closer = xyxy[None, :, 3] > xyxy[:, None, 3]
    hidden = (_intersection(xyxy, xyxy) * closer).sum(1) + _intersection(xyxy, pillars).sum(1)
    outside = area - _intersection(xyxy, frame_box[None])[:, 0]
    return np.clip(1 - (hidden + outside) / area, 0, 1)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def _clip(xyxy: np.ndarray, frame_box: np.ndarray) -> np.ndarray:
    return np.clip(xyxy, frame_box[[0, 1, 0, 1]], frame_box[[2, 3, 2, 3]])


def _in_frame(xyxy: np.ndarray, frame_box: np.ndarray) -> np.ndarray:
    return (xyxy[:, 2] > 0) & (xyxy[:, 0] < frame_box[2])


LINES = {f"x{int(x * 100)}": [[x, 0.02], [x, 0.98]] for x in (0.15, 0.3, 0.5, 0.7)} | {
    "zigzag": [[0.82, 0.02], [0.88, 0.5], [0.82, 0.98]]}
"""Five counting lines across the walkway (the walkers cross them going left or right), one a polyline."""
ZONES = {f"z{i}": [[x, 0.1], [x + 0.1, 0.1], [x + 0.12, 0.9], [x - 0.02, 0.9]]
         for i, x in enumerate((0.05, 0.22, 0.4, 0.58, 0.76))}
"""Five zones (trapezia) along the walkway, between and around the lines."""


def analytics_layout(labels: list[str] | None = None, margin: float | None = None) -> dict:
    """The zones and lines of the scenes, as an agent.yaml `analytics:` stream entry (fractions)."""
    extra: dict = {"labels": labels or []} | ({} if margin is None else {"margin": margin})
    return {"zones": {name: {"polygon": polygon, **extra} for name, polygon in ZONES.items()},
            "lines": {name: {"points": points, **extra} for name, points in LINES.items()}}


def true_events(scene: Scene, fps: float = 30.0) -> list:
    """The scene's exact zone visits and line crossings: the evaluator (agent.analytics) on the ground
    truth's boxes with no hysteresis margin and no forgetting (an object hidden behind a pillar is
    the same object when it shows again). Times are frame / fps."""
    from edgefleet.agent.analytics import StreamEvaluator
    from edgefleet.agent.zones import StreamAnalytics

    evaluator = StreamEvaluator("scene", StreamAnalytics.model_validate(analytics_layout(margin=0.0)),
                                lost_frames=10 ** 9, totals=None, handoff=False)
    events = []
    for t, (ids, xyxy) in enumerate(zip(scene.gt_ids, scene.gt_xyxy)):
        events += evaluator.update(t, t / fps, xyxy, ids, ["person"] * len(ids), (scene.spec.width, scene.spec.height))
    return events


def describe(scene: Scene) -> dict:
    return {"spec": asdict(scene.spec), **scene.stats}


if __name__ == "__main__":
    import json
    for n in (10, 50, 200):
        print(json.dumps(describe(make_scene(SceneSpec(objects=n)))))


def int_list(text: str) -> list[int]:
    """A comma-separated list of numbers as the benchmarks take them: "10,50,200" -> [10, 50, 200]."""
    return [int(x) for x in text.split(",") if x]
