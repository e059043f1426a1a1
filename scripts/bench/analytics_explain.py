"""Why a true crossing was missed and why a count was not right: scripts/bench/analytics.py --explain.

Each missed true crossing (object O, segment S, direction D, frame f) is put in one class, looked at
in the `WINDOW` frames either side of f, through the tracks whose published box is O's (IoU >= 0.3):
- `counted_as_other`: a track that followed the object counted it, but the count's box was given
  to another object (the harness's attribution, not the evaluator);
- `counted_late`: the object's track counted it, further than the match window away;
- `wrong_direction`: the object's track counted S in the other direction only;
- `not_tracked`: no track followed O on either side of f;
- `track_starts_beyond`: no track followed O before f (picked up only past the line);
- `track_ends_before`: no track followed O after f (lost for good before the line);
- `id_switch`: one track before f, another once beyond the margin after it (the new id has no side
  to change from);
- `forgotten`: the same track on both sides, but unseen for longer than the evaluator remembers a
  track (its side was forgotten);
- `margin_not_passed`: no track that followed the object was beyond the margin on the far side after
  f, or the one that was had not been beyond it on the near side before;
- `segment_end`: the same track passed beyond the margin on both sides, but the path between
  passes beyond the segment's end;
- `other`.

Each count that is not right is put in one class:
- `double_same_track`, `double_other_track`: the object's crossing was counted already, by the
  same track (jitter or back and forth) or by another (one track lost, a new one counted again);
- `no_object`: the track followed no ground-truth object around the count (a false track);
- `wrong_direction`: the object crossed that segment the other way only;
- `id_transfer`: the track followed one object before the count and another after;
- `past_segment_end`: the object made no crossing of that segment, but passed its end closer than the
  margin: the exact box went by the end, the detected one (box noise) across the segment;
- `no_such_crossing`: the object made no crossing of that segment.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from edgefleet.agent.analytics import LineCrossing

WINDOW = 300
"""Frames either side of a crossing looked at."""

MISS_CLASSES = ("counted_as_other", "counted_late", "wrong_direction", "not_tracked", "track_starts_beyond",
                "track_ends_before", "id_switch", "forgotten", "margin_not_passed", "segment_end", "other")
COUNT_CLASSES = ("double_same_track", "double_other_track", "no_object", "wrong_direction", "id_transfer",
                 "past_segment_end", "no_such_crossing")


def explain_miss(t: LineCrossing, ident: list[dict[int, int | None]], rows: list, events: list,
                 segment: tuple[np.ndarray, np.ndarray], margin: float, lost_frames: int, match_frames: int) -> str:
    """The class of a missed true crossing `t` (see the module's docstring)."""
    f, obj = t.frame_index, t.track_id
    frames = range(max(0, f - WINDOW), min(len(ident), f + WINDOW))
    cover = [(g, tid) for g in frames for tid, o in ident[g].items() if o == obj]
    tracks = {tid for _, tid in cover}
    mine = [e for e in events if isinstance(e, LineCrossing) and e.track_id in tracks
            and (e.line, e.segment) == (t.line, t.segment) and abs(e.frame_index - f) <= WINDOW]
    if any(e.direction == t.direction and abs(e.frame_index - f) <= match_frames for e in mine):
        return "counted_as_other"
    if any(e.direction == t.direction for e in mine):
        return "counted_late"
    if mine:
        return "wrong_direction"
    side = _sides(rows, segment, margin)
    want = 1 if t.direction == "in" else -1
    before = [c for c in cover if c[0] < f]
    after = [c for c in cover if c[0] >= f]
    beyond = [c for c in after if side(*c) == want]
    if not before or not after:
        return "not_tracked" if not cover else "track_starts_beyond" if not before else "track_ends_before"
    if not beyond:
        return "margin_not_passed"
    tid = before[-1][1]
    if tid != beyond[0][1]:
        return "id_switch"
    seen = [g for g in frames if (rows[g][0] == tid).any()]
    if any(b - a > lost_frames for a, b in zip(seen, seen[1:]) if a < beyond[0][0] and b > before[-1][0]):
        return "forgotten"
    if not any(side(g, tid) == -want for g in seen if g < f):
        return "margin_not_passed"
    return "segment_end"


def _sides(rows: list, segment: tuple[np.ndarray, np.ndarray], margin: float):
    """`side(frame, track)`: the side of the segment's line the track's bottom centre is on that frame
    beyond the margin (-1, +1), or 0."""
    a, b = segment
    unit = (b - a) / np.hypot(*(b - a))

    def side(g: int, tid: int) -> int:
        box = rows[g][1][rows[g][0] == tid][0]
        x, y = (box[0] + box[2]) / 2, box[3]
        distance = unit[0] * (y - a[1]) - unit[1] * (x - a[0])
        return int(np.sign(distance)) if abs(distance) > margin * (box[3] - box[1]) else 0
    return side


def explain_count(e: LineCrossing, obj: int | None, every: list[LineCrossing], counted: list[LineCrossing],
                  ident: list[dict[int, int | None]], before_after: tuple[int | None, int | None],
                  near_end: bool = False) -> str:
    """The class of a count that matched no true crossing; `counted`: the counts matched before it."""
    if obj is None:
        return "no_object"
    key = (obj, e.line, e.segment, e.direction)
    if any((t.track_id, t.line, t.segment, t.direction) == key for t in every):
        same = any(c.track_id == e.track_id and (c.line, c.segment, c.direction) == key[1:] for c in counted)
        return "double_same_track" if same else "double_other_track"
    if any(t.track_id == obj and (t.line, t.segment) == (e.line, e.segment) for t in every):
        return "wrong_direction"
    if None not in before_after and before_after[0] != before_after[1]:
        return "id_transfer"
    return "past_segment_end" if near_end else "no_such_crossing"


def near_segment_end(scene, obj: int, frame: int, segment: tuple[np.ndarray, np.ndarray], margin: float) -> bool:
    """Whether the object's exact bottom centre is within the margin of one of the segment's ends on
    any frame within WINDOW of `frame` (its path went by the end, not across)."""
    a, b = segment
    for g in range(max(0, frame - WINDOW), min(len(scene.gt_ids), frame + WINDOW)):
        ids = scene.gt_ids[g]
        if obj in ids:
            box = scene.gt_xyxy[g][ids.tolist().index(obj)]
            point = np.array([(box[0] + box[2]) / 2, box[3]])
            reach = margin * (box[3] - box[1])
            if min(np.hypot(*(point - a)), np.hypot(*(point - b))) <= reach:
                return True
    return False


def tally(classes: list[str], names: tuple[str, ...]) -> dict[str, int]:
    counts = Counter(classes)
    return {name: counts[name] for name in names}
