"""ByteTrack (Zhang et al., ECCV 2022): associate every detection box, low scores included.

Per frame, after a Kalman prediction of every track (agent/kalman.py):

1. high-score detections (confidence >= `high_confidence_threshold`) against all tracks —
   tentative, tracked and lost — on the IoU distance fused with the detection score;
2. low-score detections (between the two thresholds) against the confirmed tracks still
   unmatched, on plain IoU distance: an occluded or blurred object keeps its track through a
   weak detection instead of the track going lost, and a lost one comes back through it
   (see `refind_lost_with_low_confidence`);
3. high-score detections still unmatched and above `track_activation_threshold` start
   tentative tracks. Low-score detections never start a track.

Lifecycle: tentative -> confirmed after `minimum_consecutive_frames` matched frames in a row
(a tentative track that misses one frame is dropped) -> lost while unmatched -> removed after
`lost_track_buffer` frames (scaled by `frame_rate / 30`, as in the paper). A lost track that
matches again keeps its id. Ids are given at confirmation, counting from 1 per tracker
instance, and never reused.

Frames without detection (`predict_only()`, the agent's detect interval and motion gate) show
the confirmed tracks at their Kalman predictions: those matched on the last detected frame, and
those that missed no more than `coast_missed_detections` detected frames in a row.

Tracks are columns (one numpy array per field, one row per track), so a frame costs a fixed
number of vectorized calls whatever the number of objects. Each match pairs a track index with
the detection's input row (the index column of Ultralytics' tracker): the output rows are the
input rows, nothing is re-matched afterwards.

Classes: a track keeps the class of its first detection and matches only detections of that
class, unless `match_across_classes` is set (then the class is ignored for matching and a
detector flipping between similar classes does not break the track).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import lap
import numpy as np

from edgefleet.models.detections import Detections

from .errors import ConfigError
from .kalman import KalmanFilterXYAH, xyah_to_xyxy, xyxy_to_xyah

logger = logging.getLogger(__name__)

NO_TRACK = -1
"""`associate()`'s id for a row that belongs to no confirmed track."""


TENTATIVE, TRACKED, LOST = 0, 1, 2
"""Track states (plain ints: they live in a numpy column)."""


@dataclass(frozen=True)
class ByteTrackConfig:
    """Thresholds, with the paper's (and Ultralytics' bytetrack.yaml) values as defaults."""

    high_confidence_threshold: float = 0.5
    """`track_high_thresh`: detections at or above it go to the first association. Higher: fewer
    false positives steal tracks, but more real objects wait for the weaker second stage."""
    low_confidence_threshold: float = 0.1
    """`track_low_thresh`: detections at or below it are ignored. Lower: occluded objects keep
    their tracks through fainter detections, at the risk of tracks latching onto clutter."""
    track_activation_threshold: float = 0.6
    """`new_track_thresh`: an unmatched detection needs this score to start a track. Higher:
    fewer tracks born from false positives, new objects are picked up later (or never)."""
    lost_track_buffer: int = 30
    """`track_buffer`: frames (at 30 fps) a lost track waits to be found again. Higher: ids
    survive longer occlusions, but a lost track may grab a different object passing by."""
    minimum_matching_threshold: float = 0.8
    """`match_thresh`: largest accepted cost 1 - IoU x score in the first association. Higher:
    faster or jumpier objects stay matched, but neighbours are swapped more easily."""
    low_confidence_matching_threshold: float = 0.5
    """Largest accepted 1 - IoU in the second association (fixed to 0.5 in the paper). Higher:
    more weak detections extend tracks, more of them wrongly."""
    minimum_consecutive_frames: int = 2
    """Matched frames in a row before a track is confirmed and gets an id. Higher: fewer
    short-lived ids from flickering false positives, new objects appear later."""
    frame_rate: float = 30.0
    """Source frames per second; scales `lost_track_buffer` so it stays a duration."""
    fuse_score: bool = True
    """Multiply IoU by the detection score in the first association: confident detections win
    ties between overlapping boxes."""
    match_across_classes: bool = False
    """Match tracks to detections of any class (the track keeps its first class). Off: a
    person is never continued by a bicycle box on top of it."""
    refind_lost_with_low_confidence: bool = True
    """Let the second association take lost tracks too, not only those tracked on the previous
    frame. On: the paper's Algorithm 1 (every track left over from the first association); an
    object coming out from behind an occluder, still half hidden and detected weakly, gets its id
    back at once instead of once it scores high again (+4 to +8 IDF1 points, a third to half fewer id
    switches on scripts/bench/tracking.py's scenes). The cost: a lost track can take a weak false
    positive lying where it predicts the object. Off: the paper's released code (and Ultralytics')."""
    coast_missed_detections: int = 1
    """On frames without detection, a lost track that missed at most this many detected frames in
    a row is still shown at its predicted box. A single miss is far more often the detector than
    the object leaving; at detect interval k, not coasting turns each miss into k missing frames.
    Higher: fewer gaps in an object's boxes, more boxes left behind where an object has gone.
    0: only the tracks matched on the last detected frame are shown."""

    def __post_init__(self) -> None:
        for name in ("high_confidence_threshold", "low_confidence_threshold", "track_activation_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"ByteTrackConfig.{name} must be within [0, 1], got {value!r}")
        for name in ("minimum_matching_threshold", "low_confidence_matching_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:  # a cost of 1 is no overlap at all
                raise ConfigError(f"ByteTrackConfig.{name} must be within [0, 1), got {value!r}")
        if self.low_confidence_threshold > self.high_confidence_threshold:
            raise ConfigError(
                f"ByteTrackConfig.low_confidence_threshold ({self.low_confidence_threshold!r}) must not exceed "
                f"high_confidence_threshold ({self.high_confidence_threshold!r})")
        for name in ("lost_track_buffer", "coast_missed_detections"):
            if getattr(self, name) < 0:
                raise ConfigError(f"ByteTrackConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.minimum_consecutive_frames < 1:
            raise ConfigError(
                f"ByteTrackConfig.minimum_consecutive_frames must be >= 1, got {self.minimum_consecutive_frames!r}")
        if self.frame_rate <= 0:
            raise ConfigError(f"ByteTrackConfig.frame_rate must be > 0, got {self.frame_rate!r}")

    @property
    def max_frames_lost(self) -> int:
        return int(self.frame_rate / 30.0 * self.lost_track_buffer)


class ByteTrack:
    """Multi-object tracker for one stream. Not thread-safe; one instance per stream."""

    def __init__(self, config: ByteTrackConfig | None = None, **overrides) -> None:
        """`ByteTrack()`, `ByteTrack(config)` or `ByteTrack(lost_track_buffer=60)`."""
        if config is None:
            config = ByteTrackConfig(**overrides)
        elif overrides:
            raise ConfigError(f"ByteTrack takes a config or keyword overrides, not both: {sorted(overrides)}")
        self.config = config
        self.kalman = KalmanFilterXYAH()
        self.frame = 0
        self._next_id = 1
        self._mean = np.zeros((0, 8))
        self._covariance = np.zeros((0, 3, 4))  # agent/kalman.py's per-coordinate blocks
        self._id = np.zeros(0, np.int64)
        self._class = np.zeros(0, np.int32)
        self._score = np.zeros(0, np.float32)
        self._state = np.zeros(0, np.int8)
        self._hits = np.zeros(0, np.int32)
        self._last_matched = np.zeros(0, np.int64)
        self._misses = np.zeros(0, np.int32)  # detected frames missed in a row

    def __len__(self) -> int:
        """Tracks held: tentative, tracked and lost."""
        return len(self._id)

    # -- public API -------------------------------------------------------------------------

    def update(self, detections: Detections) -> Detections:
        """Track one frame's detections.

        Returns the input rows that belong to a confirmed track, in input order, with their
        input boxes, scores and classes unchanged and `tracker_id` filled. Rows that got no
        confirmed track (low-score leftovers, tentative tracks, unmatched clutter) are dropped;
        `associate()` gives the id of every input row instead.
        """
        ids = self.associate(detections)
        keep = ids != NO_TRACK
        return Detections(detections.xyxy[keep], detections.confidence[keep], detections.class_id[keep], ids[keep])

    def associate(self, detections: Detections) -> np.ndarray:
        """Track one frame; the confirmed track id of each input row, or NO_TRACK (-1)."""
        cfg = self.config
        self.frame += 1
        self._predict()
        xyxy, score = detections.xyxy, detections.confidence
        valid = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        rows = (valid & (score > cfg.low_confidence_threshold)).nonzero()[0]  # all that take part
        high = score[rows] >= cfg.high_confidence_threshold
        high_cols, low_cols = high.nonzero()[0], (~high).nonzero()[0]
        iou = _iou(xyah_to_xyxy(self._mean[:, :4]), xyxy[rows])  # tracks x rows, for both stages
        if not cfg.match_across_classes:
            iou[self._class[:, None] != detections.class_id[rows][None, :]] = 0.0

        # 1. high-score detections against every track, on IoU x score
        similarity = iou[:, high_cols]
        if cfg.fuse_score:
            similarity *= score[rows[high_cols]][None, :]
        first_tracks, cols = _assign(1.0 - similarity, cfg.minimum_matching_threshold)
        first_rows = rows[high_cols[cols]]
        # 2. low-score detections against the confirmed tracks still unmatched (the tracked ones
        #    only, unless lost ones may be refound), on IoU
        left = (self._state != TENTATIVE) if cfg.refind_lost_with_low_confidence else (self._state == TRACKED)
        left[first_tracks] = False
        pool = left.nonzero()[0]
        second_tracks, cols = _assign(1.0 - iou[pool][:, low_cols], cfg.low_confidence_matching_threshold)
        second_tracks, second_rows = pool[second_tracks], rows[low_cols[cols]]

        tracks = np.concatenate([first_tracks, second_tracks])
        matched_rows = np.concatenate([first_rows, second_rows])
        self._correct(tracks, matched_rows, detections)
        ids = np.full(len(detections), NO_TRACK, np.int64)
        ids[matched_rows] = self._id[tracks]  # tentative tracks hold NO_TRACK

        unmatched = np.ones(len(self), bool)
        unmatched[tracks] = False
        self._misses[unmatched] += 1
        self._state[unmatched & (self._state == TRACKED)] = LOST
        self._drop(unmatched & (self._state == TENTATIVE))
        self._drop_expired()

        # 3. high-score detections left over start tentative tracks
        starters = np.ones(len(detections), bool)
        starters[first_rows] = False
        starters = (starters & valid & (score >= cfg.high_confidence_threshold)
                    & (score >= cfg.track_activation_threshold)).nonzero()[0]
        ids[starters] = self._start(starters, detections)
        return ids

    def predict_only(self) -> Detections:
        """Advance one frame without detections; the predicted boxes of the tracked objects.

        For frames the detector skips: every confirmed track matched on the last detected frame or
        lost for at most `coast_missed_detections` of them, with its Kalman prediction as the box,
        the score of its last detection and its class. Every row is a prediction (see `step()` for
        the marker). Tentative tracks are not shown.
        """
        self.frame += 1
        self._predict()
        self._drop_expired()
        shown = (self._state == TRACKED) | (
            (self._state == LOST) & (self._misses <= self.config.coast_missed_detections))
        return Detections(xyah_to_xyxy(self._mean[shown, :4]), self._score[shown], self._class[shown],
                          self._id[shown])

    def step(self, detections: Detections | None, min_confidence: float = 0.0) -> tuple[Detections, np.ndarray]:
        """`update(detections)`, or `predict_only()` when `detections` is None, plus a boolean
        `predicted` column parallel to the returned rows (True where the box is a prediction).
        Rows scoring under `min_confidence` are tracked but not returned (what an agent publishes)."""
        if detections is None:
            out = self.predict_only()
            predicted = np.ones(len(out), bool)
        else:
            out = self.update(detections)
            predicted = np.zeros(len(out), bool)
        if min_confidence > 0:
            shown = out.confidence >= min_confidence
            out, predicted = out[shown], predicted[shown]
        return out, predicted

    # -- steps --------------------------------------------------------------------------------

    def _predict(self) -> None:
        if not len(self):
            return
        self._mean[self._state == LOST, 7] = 0.0  # a lost box keeps its size (as in the paper)
        self._mean, self._covariance = self.kalman.predict(self._mean, self._covariance)

    def _correct(self, tracks: np.ndarray, rows: np.ndarray, detections: Detections) -> None:
        """Kalman-update matched tracks; confirm tentative ones that have enough hits."""
        if not len(tracks):
            return
        self._mean[tracks], self._covariance[tracks] = self.kalman.update(
            self._mean[tracks], self._covariance[tracks], xyxy_to_xyah(detections.xyxy[rows]))
        self._score[tracks] = detections.confidence[rows]
        self._last_matched[tracks] = self.frame
        self._misses[tracks] = 0
        self._hits[tracks] += 1
        tentative = self._state[tracks] == TENTATIVE
        self._state[tracks[~tentative]] = TRACKED
        ready = tentative & (self._hits[tracks] >= self.config.minimum_consecutive_frames)
        self._confirm(tracks[ready][np.argsort(rows[ready], kind="stable")])

    def _confirm(self, tracks: np.ndarray) -> None:
        """Give `tracks` (in this order) the next ids and make them tracked."""
        self._id[tracks] = np.arange(self._next_id, self._next_id + len(tracks))
        self._next_id += len(tracks)
        self._state[tracks] = TRACKED

    def _start(self, rows: np.ndarray, detections: Detections) -> np.ndarray:
        """New tentative tracks from detection `rows`; their ids (NO_TRACK unless confirmed at once)."""
        n = len(rows)
        if not n:
            return np.zeros(0, np.int64)
        mean, covariance = self.kalman.initiate(xyxy_to_xyah(detections.xyxy[rows]))
        first = len(self)
        self._mean = np.concatenate([self._mean, mean])
        self._covariance = np.concatenate([self._covariance, covariance])
        self._id = np.concatenate([self._id, np.full(n, NO_TRACK, np.int64)])
        self._class = np.concatenate([self._class, detections.class_id[rows]])
        self._score = np.concatenate([self._score, detections.confidence[rows]])
        self._state = np.concatenate([self._state, np.full(n, TENTATIVE, np.int8)])
        self._hits = np.concatenate([self._hits, np.ones(n, np.int32)])
        self._last_matched = np.concatenate([self._last_matched, np.full(n, self.frame, np.int64)])
        self._misses = np.concatenate([self._misses, np.zeros(n, np.int32)])
        new = np.arange(first, first + n)
        if self.config.minimum_consecutive_frames <= 1:
            self._confirm(new)
        return self._id[new]

    def _drop_expired(self) -> None:
        expired = (self._state == LOST) & (self.frame - self._last_matched > self.config.max_frames_lost)
        self._drop(expired)

    def _drop(self, mask: np.ndarray) -> None:
        if not mask.any():
            return
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("frame %s: removing tracks %s", self.frame, self._id[mask].tolist())
        keep = ~mask
        self._mean, self._covariance = self._mean[keep], self._covariance[keep]
        self._id, self._class, self._score = self._id[keep], self._class[keep], self._score[keep]
        self._state, self._hits, self._last_matched = self._state[keep], self._hits[keep], self._last_matched[keep]
        self._misses = self._misses[keep]


def _iou(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    """Pairwise IoU (len(a), len(b)): models.yolo.box_iou's arithmetic with fewer temporaries
    (it runs on every frame); the union is floored so degenerate track boxes give 0, not NaN."""
    ax1, ay1, ax2, ay2 = (c[:, None] for c in a_xyxy.T)
    bx1, by1, bx2, by2 = b_xyxy.T
    inter = np.minimum(ax2, bx2) - np.maximum(ax1, bx1)
    np.maximum(inter, 0.0, out=inter)
    ih = np.minimum(ay2, by2) - np.maximum(ay1, by1)
    np.maximum(ih, 0.0, out=ih)
    inter *= ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / np.maximum(union, 1e-9, out=union)


def _assign(cost: np.ndarray, max_cost: float) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost one-to-one (row, column) pairs with cost <= max_cost, rows ascending.

    Exactly lap.lapjv with `cost_limit` (what the paper's code runs), solved on less: a row and a
    column that can only pair with each other are taken directly (pairing never costs more than
    leaving both alone), rows and columns with no pair under `max_cost` are left out, and only
    what remains (crowds, crossings) goes to lapjv. Most frames then skip lapjv altogether.
    """
    if not cost.size:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    feasible = cost <= max_cost
    per_row, per_col = feasible.sum(1), feasible.sum(0)
    if per_row.max() <= 1 and per_col.max() <= 1:  # no conflicts at all: the common frame
        rows, cols = np.nonzero(feasible)
        return rows, cols
    alone = feasible & (per_row == 1)[:, None] & (per_col == 1)[None, :]
    rows, cols = np.nonzero(alone)
    open_rows = np.flatnonzero((per_row > 0) & ~alone.any(1))
    open_cols = np.flatnonzero((per_col > 0) & ~alone.any(0))
    _, row_to_col, _ = lap.lapjv(cost[np.ix_(open_rows, open_cols)], extend_cost=True, cost_limit=max_cost)
    taken = np.flatnonzero(row_to_col >= 0)
    more_rows, more_cols = open_rows[taken], open_cols[row_to_col[taken]]
    ok = cost[more_rows, more_cols] <= max_cost
    rows, cols = np.concatenate([rows, more_rows[ok]]), np.concatenate([cols, more_cols[ok]])
    order = np.argsort(rows, kind="stable")
    rows, cols = rows[order], cols[order]
    return rows, cols
