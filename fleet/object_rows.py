"""What one group commit writes for the records devices publish, shared by both stores.

A `DetectionBatch` carries frames, object events, count batches and snapshots, each with its own
sequence from the device's one sequence space (`common.convert.batch_records`). `parse_batch`
validates a device's records (InvalidArgument naming the field) and sorts them by kind;
`take_batch` decides, against the device's acked sequence, which are new, and adds them to the
group's `GroupWrites`, which the store then writes in a few statements:

- frames: rows of `detections` (`detection_store.frame_rows`) if the `FramePolicy` keeps them,
  idempotent on (device, sequence) as before; frames not kept are acked all the same;
- object events: one upsert per (device, object id) with the newest state by `last_seen` (of the
  group's events, then against the stored row: an older state never overwrites a newer one, and
  `ended` once true stays true);
- counts: added into per-minute rows, only for a record above the device's acked sequence, so a
  replay adds nothing (exactly once);
- snapshots: the JPEG stored once by its sha256 (computed here), and a row per object picture.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field

from edgefleet.common.records import (
    CountRecord,
    FrameRecord,
    ObjectEventRecord,
    Record,
    SnapshotRecord,
    TrackedObject,
)

from .errors import InvalidArgument
from .frame_rows import StoreResult, frame_rows, take_new_rows
from .history_store import SQLITE_MAX_INT

SNAPSHOT_KINDS = ("crop", "frame")
"""The pictures the outbox carries ("live" answers CaptureFrame and is never stored)."""
COUNT_KINDS = ("zone", "line")
OBJECT_EVENTS = ("new", "update", "end")
OBJECT_COLUMNS = ("device_id", "object_id", "stream_id", "track_id", "label", "class_id", "first_seen", "last_seen",
                  "best_score", "best_box", "path", "zones", "lines", "crossings", "frames", "ended", "has_snapshot",
                  "updated")
"""The columns of `objects`, in the order of `object_row`'s values. `lines`: the names of the lines crossed
(for the line filter); box, path, zones, lines and crossings are JSON text."""
COUNT_KEY = ("device_id", "stream_id", "minute", "kind", "name", "label", "direction")
SNAPSHOT_COLUMNS = ("device_id", "object_id", "kind", "sha256", "time", "label", "score", "stream_id")
"""The columns of `object_snapshots` (the JPEG itself is in `snapshots`, by sha256)."""


@dataclass(frozen=True)
class FramePolicy:
    """Which frames the controller keeps as rows of `detections` (`serve --store-frames`).

    "all" keeps every frame; "none" keeps none (objects, counts and snapshots still are, and frames
    are acked all the same); "sample" keeps frames whose frame index is a multiple of `every`.
    """

    mode: str = "all"
    every: int = 1

    @classmethod
    def parse(cls, text: str) -> FramePolicy:
        """`all`, `none` or `sample:N` (N >= 1); ValueError naming the value otherwise."""
        if text in ("all", "none"):
            return cls(text)
        mode, _, every = text.partition(":")
        if mode == "sample" and every.isdigit() and int(every) >= 1:
            return cls("sample", int(every))
        raise ValueError(f"expected all, none or sample:N with N a whole number >= 1, got {text!r}")

    def keeps(self, frame: FrameRecord) -> bool:
        if self.mode == "all":
            return True
        return self.mode == "sample" and frame.frame_index % self.every == 0

    def __str__(self) -> str:
        return f"sample:{self.every}" if self.mode == "sample" else self.mode


ALL_FRAMES = FramePolicy()


@dataclass
class ParsedBatch:
    """One device's validated records: the frame rows to keep, and the other records (frames not kept
    included) in sequence order."""

    frame_rows: list[tuple]
    others: list[Record]


@dataclass
class GroupWrites:
    """Everything a group commit writes, gathered over its batches."""

    frame_rows: list[tuple] = field(default_factory=list)
    objects: dict[tuple[str, str], TrackedObject] = field(default_factory=dict)
    counts: dict[tuple, int] = field(default_factory=lambda: defaultdict(int))
    jpegs: dict[str, bytes] = field(default_factory=dict)
    pictures: dict[tuple, tuple] = field(default_factory=dict)
    frames_stored: dict[str, int] = field(default_factory=dict)
    """Device -> its new rows of `detections` (its `detections_stored` grows by them)."""
    records_stored: dict[str, int] = field(default_factory=dict)
    """Device -> its new records of every kind, replays not counted (its `records_stored` grows by them)."""
    touched: set[str] = field(default_factory=set)
    """Devices with any record in the group (their acked sequence and last_seen are written)."""

    def object_rows(self, now: float) -> list[tuple]:
        return [object_row(obj, now) for obj in self.objects.values()]

    def count_rows(self) -> list[tuple]:
        return [(*key, n) for key, n in self.counts.items()]

    def snapshot_rows(self, now: float) -> list[tuple]:
        """(sha256, jpeg, size, created) of each picture."""
        return [(sha, jpeg, len(jpeg), now) for sha, jpeg in self.jpegs.items()]


def parse_batch(device_id: str, records: list[Record], now: float, policy: FramePolicy) -> ParsedBatch:
    """The batch's frame rows (those `policy` keeps) and its other records, checked; InvalidArgument naming
    the field otherwise. Every record gets `device_id`."""
    if all(type(r) is FrameRecord for r in records) and policy.mode == "all":  # the common case, at its cost
        return ParsedBatch(frame_rows(device_id, records, now), [])  # type: ignore[arg-type]
    kept: list[FrameRecord] = []
    others: list[Record] = []
    for rec in records:
        _check_sequence(rec)
        if isinstance(rec, FrameRecord):
            if policy.keeps(rec):
                kept.append(rec)
                continue
            if not 0 <= rec.frame_index <= SQLITE_MAX_INT:  # the check a kept frame's row makes
                raise InvalidArgument(f"frames[].frame_index must be in 0..{SQLITE_MAX_INT}, got {rec.frame_index}")
        else:
            _check_record(rec)
        if isinstance(rec, ObjectEventRecord):
            rec.object.device_id = device_id
        else:
            rec.device_id = device_id
        others.append(rec)
    others.sort(key=lambda r: r.sequence)
    return ParsedBatch(frame_rows(device_id, kept, now), others)


def _check_sequence(rec: Record) -> None:
    if not 1 <= rec.sequence <= SQLITE_MAX_INT:
        raise InvalidArgument(f"{_kind(rec)}.sequence must be in 1..{SQLITE_MAX_INT}, got {rec.sequence}")


def _kind(rec: Record) -> str:
    return {FrameRecord: "frames[]", ObjectEventRecord: "objects[]", CountRecord: "counts[]"}.get(
        type(rec), "snapshots[]")


def _check_record(rec: Record) -> None:
    """InvalidArgument for what neither store can hold or answer: NUL characters, unknown kinds, counts
    that are not whole minutes."""
    if isinstance(rec, ObjectEventRecord):
        _check_object(rec)
    elif isinstance(rec, CountRecord):
        _check_counts(rec)
    elif isinstance(rec, SnapshotRecord):
        if rec.kind not in SNAPSHOT_KINDS:
            raise InvalidArgument(f"snapshots[].snapshot.kind must be crop or frame, got {rec.kind!r}")
        if not rec.object_id or not rec.jpeg:
            raise InvalidArgument(f"snapshots[].snapshot needs an object_id and a jpeg (object {rec.object_id!r}, "
                                  f"{len(rec.jpeg)} bytes)")
        _check_text("snapshots[].snapshot", rec.object_id, rec.stream_id, rec.label)


def _check_object(rec: ObjectEventRecord) -> None:
    obj = rec.object
    if rec.type not in OBJECT_EVENTS:
        raise InvalidArgument(f"objects[].type must be one of {', '.join(OBJECT_EVENTS)}, got {rec.type!r}")
    if not obj.object_id:
        raise InvalidArgument("objects[].object.object_id is empty")
    _check_text("objects[].object", obj.object_id, obj.stream_id, obj.label, *obj.zones,
                *(line for line, _, _ in obj.crossings))
    _check_int("objects[].object.track_id", obj.track_id)
    _check_int("objects[].object.frames", obj.frames)


def _check_counts(rec: CountRecord) -> None:
    for row in rec.rows:
        if row.kind not in COUNT_KINDS:
            raise InvalidArgument(f"counts[].rows[].kind must be zone or line, got {row.kind!r}")
        if row.minute % 60 or not 0 <= row.minute <= SQLITE_MAX_INT:
            raise InvalidArgument(f"counts[].rows[].minute must be a minute's start (unix seconds, a multiple "
                                  f"of 60), got {row.minute}")
        _check_int("counts[].rows[].count", row.count)
        _check_text("counts[].rows[]", row.stream, row.name, row.label, row.direction)


def _check_text(where: str, *values: str) -> None:
    for value in values:
        if "\x00" in value:
            raise InvalidArgument(f"{where}: text must not contain NUL characters, got {value!r}")


def _check_int(where: str, value: int) -> None:
    if not 0 <= value <= SQLITE_MAX_INT:
        raise InvalidArgument(f"{where} must be in 0..{SQLITE_MAX_INT}, got {value}")


def take_batch(device_id: str, batch: ParsedBatch, acked: dict[str, int], present: set[tuple[str, int]],
               writes: GroupWrites) -> StoreResult:
    """Add the batch's new records to `writes`; advance `acked[device_id]` to its highest sequence; what the
    batch is answered. Frame rows are new unless stored (`present`); every other record is new only above
    the device's acked sequence before it (records of one batch come in sequence order)."""
    high = acked[device_id]
    frames = take_new_rows(device_id, batch.frame_rows, acked, present, writes.frame_rows)
    if batch.frame_rows:
        writes.frames_stored[device_id] = writes.frames_stored.get(device_id, 0) + frames.stored
    stored, duplicates = frames.stored, frames.duplicates
    for rec in batch.others:
        if rec.sequence <= high:
            duplicates += 1
            continue
        high = rec.sequence
        stored += 1
        _take(device_id, rec, writes)
    if batch.frame_rows or batch.others:
        writes.touched.add(device_id)
        writes.records_stored[device_id] = writes.records_stored.get(device_id, 0) + stored
    acked[device_id] = max(acked[device_id], high)
    return StoreResult(acked[device_id], stored, duplicates)


def _take(device_id: str, rec: Record, writes: GroupWrites) -> None:
    if isinstance(rec, ObjectEventRecord):
        obj = rec.object
        obj.device_id = device_id
        if rec.type == "end":
            obj.ended = True
        key = (device_id, obj.object_id)
        writes.objects[key] = newest(writes.objects.get(key), obj)
    elif isinstance(rec, CountRecord):
        for row in rec.rows:
            writes.counts[(device_id, row.stream, row.minute, row.kind, row.name, row.label, row.direction)] += (
                row.count)
    elif isinstance(rec, SnapshotRecord):
        sha = hashlib.sha256(rec.jpeg).hexdigest()
        writes.jpegs[sha] = rec.jpeg
        writes.pictures[(device_id, rec.object_id, rec.kind, sha)] = (
            device_id, rec.object_id, rec.kind, sha, rec.capture_time, rec.label, rec.score, rec.stream_id)
    # a frame not kept: acked, nothing written


def newest(old: TrackedObject | None, new: TrackedObject) -> TrackedObject:
    """The later state of an object (by last_seen; the later one on a tie), ended if either ended."""
    if old is None:
        return new
    later, earlier = (new, old) if new.last_seen >= old.last_seen else (old, new)
    if earlier.ended and not later.ended:
        later.ended = True
    return later


def object_row(obj: TrackedObject, now: float) -> tuple:
    """The object's row of `objects` (`OBJECT_COLUMNS`)."""
    lines = sorted({line for line, _, _ in obj.crossings})
    return (obj.device_id, obj.object_id, obj.stream_id, obj.track_id, obj.label, obj.class_id, obj.first_seen,
            obj.last_seen, obj.best_score, json.dumps(list(obj.best_box)), json.dumps(obj.path), json.dumps(obj.zones),
            json.dumps(lines), json.dumps(obj.crossings), obj.frames, int(obj.ended), int(obj.has_snapshot), now)


def object_from_row(row: dict) -> TrackedObject:
    """A row of `objects` (a dict by column name; `snapshot`: whether a picture of it is stored) as the object."""
    return TrackedObject(
        object_id=row["object_id"], stream_id=row["stream_id"], track_id=row["track_id"], label=row["label"],
        class_id=row["class_id"], first_seen=row["first_seen"], last_seen=row["last_seen"],
        best_score=row["best_score"], best_box=tuple(json.loads(row["best_box"])),
        path=[tuple(p) for p in json.loads(row["path"])], zones=json.loads(row["zones"]),
        crossings=[tuple(c) for c in json.loads(row["crossings"])], frames=row["frames"], ended=bool(row["ended"]),
        has_snapshot=bool(row["has_snapshot"] or row.get("snapshot")), device_id=row["device_id"],
    )


def upsert_assignments(newer: str, greatest: str) -> str:
    """The SET list of the objects upsert, in either dialect: every column from the incoming row if it is
    not older than the stored one (`newer`: that condition), `ended` and `has_snapshot` sticky
    (`greatest`: max in SQLite, greatest in PostgreSQL)."""
    sticky = ("ended", "has_snapshot")
    parts = [f"{c} = case when {newer} then excluded.{c} else objects.{c} end"
             for c in OBJECT_COLUMNS[2:] if c not in sticky and c != "updated"]
    parts += [f"{c} = {greatest}(objects.{c}, excluded.{c})" for c in sticky]
    parts.append("updated = excluded.updated")
    return ", ".join(parts)
