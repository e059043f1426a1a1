"""A small IoU tracker: the placeholder until ByteTrack lands.

Each detection is matched to the live track of the same class it overlaps most
(greedy, highest IoU first). Unmatched detections start tracks; tracks unmatched for
more than `lost_track_buffer` frames are dropped. Output rows are the input rows, in
order, with `tracker_id` filled in: nothing is re-matched afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.detections import Detections
from models.yolo import box_iou


@dataclass
class IoUTracker:
    minimum_iou: float = 0.3
    """Overlap needed to continue a track. Higher: fewer wrong merges, more id breaks on fast motion."""
    lost_track_buffer: int = 15
    """Frames a track survives without a match. Higher: ids survive short occlusions, ghosts linger."""

    def __post_init__(self) -> None:
        self._xyxy = np.zeros((0, 4), dtype=np.float32)
        self._class = np.zeros(0, dtype=np.int32)
        self._ids = np.zeros(0, dtype=np.int64)
        self._missed = np.zeros(0, dtype=np.int32)
        self._next_id = 1

    def predict_only(self) -> Detections:
        """The live tracks' last boxes, for frames without detection (this tracker has no motion model)."""
        live = self._missed == 0
        return Detections(self._xyxy[live], np.ones(int(live.sum()), np.float32), self._class[live], self._ids[live])

    def update(self, detections: Detections) -> Detections:
        n = len(detections)
        track_of_row = np.zeros(n, dtype=np.int64)
        matched_tracks = np.zeros(len(self._ids), dtype=bool)
        if n and len(self._ids):
            iou = box_iou(detections.xyxy, self._xyxy)
            iou[detections.class_id[:, None] != self._class[None, :]] = 0.0
            rows, cols = np.nonzero(iou >= self.minimum_iou)
            order = np.argsort(-iou[rows, cols], kind="stable")
            used_rows = np.zeros(n, dtype=bool)
            for r, c in zip(rows[order], cols[order]):
                if used_rows[r] or matched_tracks[c]:
                    continue
                used_rows[r] = matched_tracks[c] = True
                track_of_row[r] = self._ids[c]
                self._xyxy[c] = detections.xyxy[r]
        self._missed[matched_tracks] = 0
        self._missed[~matched_tracks] += 1
        keep = self._missed <= self.lost_track_buffer
        self._xyxy, self._class, self._ids, self._missed = (
            self._xyxy[keep], self._class[keep], self._ids[keep], self._missed[keep]
        )
        new_rows = np.flatnonzero(track_of_row == 0)
        if len(new_rows):
            new_ids = np.arange(self._next_id, self._next_id + len(new_rows), dtype=np.int64)
            self._next_id += len(new_rows)
            track_of_row[new_rows] = new_ids
            self._xyxy = np.concatenate([self._xyxy, detections.xyxy[new_rows]])
            self._class = np.concatenate([self._class, detections.class_id[new_rows]])
            self._ids = np.concatenate([self._ids, new_ids])
            self._missed = np.concatenate([self._missed, np.zeros(len(new_rows), dtype=np.int32)])
        return Detections(
            xyxy=detections.xyxy, confidence=detections.confidence, class_id=detections.class_id,
            tracker_id=track_of_row,
        )
