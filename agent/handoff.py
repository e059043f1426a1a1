"""Where each tracked object is heading, and which new track goes on with a lost one (agent.analytics).

A tracker gives an object a new id when it loses it for longer than it waits (behind a pillar, in a
crowd) or fails to match it again: the new id has no side of a line to change from, and the crossing
made while the object was hidden would be missed. `Motion` keeps, per track row, its box centre,
height and velocity; `pairs` says which new tracks are where a lost track's motion puts it now, so
that agent.analytics hands the lost track's sides of the lines over to the new one.

The gate grows with the time lost: a walker's heading drifts (HANDOFF_DRIFT of the distance it would
have walked) and a box jitters (HANDOFF_GATE box heights); boxes of very different heights are not
the same object. scripts/bench/analytics.py chose the values: on its 200-object scene, where a pillar
stands over a line, the id switches behind it cost 10 to 19 crossings of 226 a run before, 1 to 3
after, for one double count more in some runs (docs/benchmarks.md, "Zones and lines").
"""
from __future__ import annotations

import numpy as np

HANDOFF_FRAMES = 150
"""A new track goes on with a track lost at most this many frames ago..."""
HANDOFF_MIN_GAP = 3
"""...and at least this many: ByteTrack shows a track once it has been matched on two detected frames in
a row, so a track seen a frame or two before a new one appears was there beside it: another object."""
HANDOFF_GATE = 0.6
"""...when its box centre is within this many of its box heights of where the lost one's motion puts it..."""
HANDOFF_DRIFT = 0.3
"""...plus this share of the distance the lost one would have walked since (its heading drifts)."""
HEIGHT_RATIO = 1.5
"""...and neither box is more than this many times as tall as the other."""
VELOCITY_FRAMES = 10
"""A track's velocity is measured over this many frames or more (a box's jitter is a few pixels)."""

_X, _Y, _H, _VX, _VY, _REF_X, _REF_Y, _REF_FRAME = range(8)


class Motion:
    """Per track row: box centre, velocity (px a frame), height, and the sighting the velocity is measured from."""

    def __init__(self, capacity: int):
        self.state = np.zeros((capacity, 8))

    def grow(self, capacity: int) -> None:
        self.state = np.concatenate([self.state, np.zeros((capacity - len(self.state), 8))])

    def move(self, rows: np.ndarray, fresh: np.ndarray, new: np.ndarray, xyxy: np.ndarray, frame_index: int) -> None:
        """The rows' boxes on `frame_index` (`fresh`: the rows seen for the first time, `new` their mask).
        Velocities are measured on every VELOCITY_FRAMES-th frame only, from each row's sighting on the
        one before: the work on other frames is one assignment."""
        m = self.state
        now = np.empty((len(rows), 3))
        now[:, 0:2] = (xyxy[:, :2] + xyxy[:, 2:]) / 2
        now[:, 2] = xyxy[:, 3] - xyxy[:, 1]
        if len(fresh):
            m[fresh] = 0.0
            m[fresh, _REF_X:_REF_Y + 1], m[fresh, _REF_FRAME] = now[new, :2], frame_index
        if frame_index % VELOCITY_FRAMES == 0:
            span = frame_index - m[rows, _REF_FRAME]
            ready = span >= VELOCITY_FRAMES / 2
            old = rows[ready]
            m[old, _VX:_VY + 1] = (now[ready, :2] - m[old, _REF_X:_REF_Y + 1]) / span[ready, None]
            m[old, _REF_X:_REF_Y + 1], m[old, _REF_FRAME] = now[ready, :2], frame_index
        m[rows, _X:_H + 1] = now

    def pairs(self, new: np.ndarray, lost: np.ndarray, gap: np.ndarray) -> list[tuple[int, int]]:
        """(new row, lost row) pairs, one to one, nearest first (in box heights): the new rows whose box is
        where a lost row's motion puts it `gap` frames after it was last seen."""
        m = self.state
        expected = m[lost, _X:_Y + 1] + m[lost, _VX:_VY + 1] * gap[:, None]
        offset = m[new, None, _X:_Y + 1] - expected[None]
        height = m[new, _H][:, None]
        distance = np.hypot(offset[..., 0], offset[..., 1]) / height
        walked = np.hypot(m[lost, _VX], m[lost, _VY]) * gap
        gate = HANDOFF_GATE + HANDOFF_DRIFT * walked[None] / height
        ratio = height / np.maximum(m[lost, _H][None], 1e-9)
        close = (distance <= gate) & (ratio * HEIGHT_RATIO > 1) & (ratio < HEIGHT_RATIO)
        given: set[int] = set()
        taken: set[int] = set()
        out = []
        for i, j in sorted(zip(*np.nonzero(close)), key=lambda ij: distance[ij]):
            if i not in given and j not in taken:
                given.add(i)
                taken.add(j)
                out.append((int(new[i]), int(lost[j])))
        return out

    def inherit(self, row: int, lost: int) -> None:
        """`row` goes on with `lost`'s velocity until it has its own."""
        self.state[row, _VX:_VY + 1] = self.state[lost, _VX:_VY + 1]
