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
- `id_switch`: one track before f, another after (the new id has no side to change from);
- `forgotten`: the same track on both sides, but unseen for longer than the evaluator remembers a
  track (its side was forgotten);
- `margin_not_passed`: the same track, but its point was not beyond the margin on one side;
- `segment_end`: the same track passed beyond the margin on both sides, but the path between
  passes beyond the segment's end;
- `other`.

Each count that is not right is put in one class:
- `double_same_track`, `double_other_track`: the object's crossing was counted already, by the
  same track (jitter or back and forth) or by another (one track lost, a new one counted again);
- `no_object`: the track followed no ground-truth object around the count (a false track);
- `wrong_direction`: the object crossed that segment the other way only;
- `id_transfer`: the track followed one object before the count and another after;
- `no_such_crossing`: the object made no crossing of that segment.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from edgefleet.agent.analytics import LineCrossing

WINDOW = 90
"""Frames either side of a crossing looked at."""

MISS_CLASSES = ("counted_as_other", "counted_late", "wrong_direction", "not_tracked", "track_starts_beyond",
                "track_ends_before", "id_switch", "forgotten", "margin_not_passed", "segment_end", "other")
COUNT_CLASSES = ("double_same_track", "double_other_track", "no_object", "wrong_direction", "id_transfer",
                 "no_such_crossing")


def explain_miss(t: LineCrossing, ident: list[dict[int, int | None]], rows: list, events: list,
                 segment: tuple[np.ndarray, np.ndarray], margin: float, lost_frames: int, match_frames: int) -> str:
    """The class of a missed true crossing `t` (see the module's docstring)."""
    f, obj = t.frame_index, t.track_id
    frames = range(max(0, f - WINDOW), min(len(ident), f + WINDOW))
    cover = [(g, tid) for g in frames for tid, o in ident[g].items() if o == obj]
    tracks = {tid for _, tid in cover}
    mine = [e for e in events if isinstance(e, LineCrossing) and e.track_id in tracks
            and (e.line, e.segment) == (t.line, t.segment) and abs(e.frame_index - f) <= 2 * WINDOW]
    if any(e.direction == t.direction and abs(e.frame_index - f) <= match_frames for e in mine):
        return "counted_as_other"
    if any(e.direction == t.direction for e in mine):
        return "counted_late"
    if mine:
        return "wrong_direction"
    before, after = [c for c in cover if c[0] < f], [c for c in cover if c[0] >= f]
    if not before or not after:
        return "not_tracked" if not cover else "track_starts_beyond" if not before else "track_ends_before"
    if before[-1][1] != after[0][1]:
        return "id_switch"
    return _same_track(before[-1][1], t, rows, frames, segment, margin, lost_frames)


def _same_track(tid: int, t: LineCrossing, rows: list, frames: range, segment: tuple[np.ndarray, np.ndarray],
                margin: float, lost_frames: int) -> str:
    """Why one track on both sides of the line did not count it."""
    seen = [(g, rows[g][1][rows[g][0] == tid][0]) for g in frames if (rows[g][0] == tid).any()]
    gaps = [b[0] - a[0] for a, b in zip(seen, seen[1:]) if a[0] < t.frame_index <= b[0]]
    if gaps and gaps[0] > lost_frames:
        return "forgotten"
    a, b = segment
    unit = (b - a) / np.hypot(*(b - a))
    want = 1 if t.direction == "in" else -1
    sides = []
    for g, box in seen:
        x, y = (box[0] + box[2]) / 2, box[3]
        distance = unit[0] * (y - a[1]) - unit[1] * (x - a[0])
        sides.append((g, int(np.sign(distance)) if abs(distance) > margin * (box[3] - box[1]) else 0))
    if not any(s == -want for g, s in sides if g < t.frame_index) or not any(
            s == want for g, s in sides if g >= t.frame_index):
        return "margin_not_passed"
    return "segment_end"


def explain_count(e: LineCrossing, obj: int | None, every: list[LineCrossing], counted: list[LineCrossing],
                  ident: list[dict[int, int | None]], before_after: tuple[int | None, int | None]) -> str:
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
    return "no_such_crossing"


def tally(classes: list[str], names: tuple[str, ...]) -> dict[str, int]:
    counts = Counter(classes)
    return {name: counts[name] for name in names}
