"""Artifacts, rollouts, their devices, and the fleet's event log: the tables behind `fleet.rollouts`.

A mixin of `FleetStore` (same connection, same single thread). Manifests are kept as the exact
serialized bytes that were signed; everything else is plain columns and JSON.
"""
from __future__ import annotations

import enum
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .errors import InvalidArgument, NotFound
from .tables import StoreTables


class RolloutState(enum.IntEnum):
    """Mirrors edgefleet.v1.RolloutState."""
    PENDING = 1
    RUNNING = 2
    PAUSED = 3
    SUCCEEDED = 4
    FAILED = 5
    ABORTED = 6

    @property
    def finished(self) -> bool:
        return self in (RolloutState.SUCCEEDED, RolloutState.FAILED, RolloutState.ABORTED)


class DeployState(enum.IntEnum):
    """Mirrors edgefleet.v1.DeploymentStatus.State; WAITING (0) is "not started on the device yet"."""
    WAITING = 0
    DOWNLOADING = 1
    VERIFYING = 2
    BUILDING = 3
    WARMING_UP = 4
    SHADOW_TESTING = 5
    ACTIVE = 6
    FAILED = 7
    ROLLED_BACK = 8

    @property
    def final(self) -> bool:
        return self in (DeployState.ACTIVE, DeployState.FAILED, DeployState.ROLLED_BACK)


SKIPPED_WAVE = -1
"""The wave of a device the rollout selected but cannot run the artifact (its reason says why)."""


@dataclass(frozen=True)
class ArtifactRecord:
    sha256: str
    name: str
    format: str
    size_bytes: int
    manifest: bytes   # serialized edgefleet.v1.ArtifactManifest, exactly as signed
    signature: bytes
    created: float


@dataclass(frozen=True)
class RolloutSpec:
    selector: dict[str, str]
    canary: int = 1
    waves_percent: tuple[int, ...] = (100,)
    gate_fps_ratio: float = 0.8
    gate_min_agreement: float = 0.8
    gate_window_s: int = 20
    max_failures: int = 0
    expect_different_detections: bool = False
    select: str = ""  # selector expression, with `selector` (fleet.selectors.combined)
    on_failure: str = "rollback"
    """When the rollout fails or is aborted: "rollback" sends the devices that switched back to their
    previous engine, "halt" leaves them on the new one (ON_FAILURE_POLICIES)."""


ON_FAILURE_POLICIES = ("rollback", "halt")


@dataclass
class RolloutDeviceRecord:
    device_id: str
    wave: int
    state: DeployState = DeployState.WAITING
    reason: str = ""
    gate_metrics: dict[str, float] = field(default_factory=dict)
    updated: float = 0.0

    @property
    def skipped(self) -> bool:
        return self.wave == SKIPPED_WAVE


@dataclass
class RolloutRecord:
    rollout_id: str
    artifact_sha256: str
    state: RolloutState
    spec: RolloutSpec
    wave: int            # the wave started last (0: the canary)
    created: float
    updated: float
    reason: str = ""
    devices: list[RolloutDeviceRecord] = field(default_factory=list)

    @property
    def waves(self) -> int:
        return max((d.wave for d in self.devices), default=-1) + 1

    def in_wave(self, wave: int) -> list[RolloutDeviceRecord]:
        return [d for d in self.devices if d.wave == wave]

    def device(self, device_id: str) -> RolloutDeviceRecord | None:
        return next((d for d in self.devices if d.device_id == device_id), None)


@dataclass(frozen=True)
class EventRecord:
    id: int
    time: float
    kind: str
    message: str
    device_id: str = ""
    rollout_id: str = ""


class RolloutTables(StoreTables):
    """Methods `FleetStore` gains."""

    # ---- artifacts ----

    def add_artifact(self, record: ArtifactRecord) -> ArtifactRecord:
        """Store it; the same sha256 pushed again keeps the first record (and signature)."""
        existing = self.find_artifact(record.sha256)
        if existing is not None:
            return existing
        self.db.table("artifacts").insert(record.__dict__)
        return record

    def find_artifact(self, sha256: str) -> ArtifactRecord | None:
        row = self.db.execute("select * from artifacts where sha256 = ?", [sha256]).fetchone()
        if row is None:
            return None
        return ArtifactRecord(*row)

    def get_artifact(self, sha256: str) -> ArtifactRecord:
        record = self.find_artifact(sha256)
        if record is None:
            raise no_artifact(sha256)
        return record

    def list_artifacts(self) -> list[ArtifactRecord]:
        return [ArtifactRecord(**row) for row in self.db["artifacts"].rows_where(order_by="created")]

    def device_may_fetch(self, device_id: str, sha256: str) -> bool:
        """A device fetches only what a rollout sent it."""
        return self.db.execute(
            "select 1 from rollout_devices d join rollouts r using (rollout_id)"
            " where d.device_id = ? and r.artifact_sha256 = ? and d.wave >= 0 limit 1",
            [device_id, sha256],
        ).fetchone() is not None

    # ---- rollouts ----

    def insert_rollout(self, rollout: RolloutRecord) -> RolloutRecord:
        """The rollout and all its devices, in one transaction."""
        def write() -> None:
            conn = self.db.conn
            conn.execute(
                f"insert into rollouts ({', '.join(ROLLOUT_COLUMNS)}) values ({', '.join('?' * 8)})",
                rollout_values(rollout),
            )
            rows = [device_row(rollout.rollout_id, d) for d in rollout.devices]
            conn.executemany(f"insert into rollout_devices ({', '.join(DEVICE_COLUMNS)}) values "
                             f"({', '.join('?' * len(DEVICE_COLUMNS))})",
                             [[r[c] for c in DEVICE_COLUMNS] for r in rows])

        self._transaction(write)
        return self.get_rollout(rollout.rollout_id)

    def update_rollout(self, rollout_id: str, *, state: RolloutState | None = None, wave: int | None = None,
                       reason: str | None = None) -> RolloutRecord:
        self.db.table("rollouts").update(rollout_id, rollout_changes(state, wave, reason))
        return self.get_rollout(rollout_id)

    def update_rollout_device(self, rollout_id: str, device: RolloutDeviceRecord) -> None:
        self.db.table("rollout_devices").upsert(device_row(rollout_id, device), pk=("rollout_id", "device_id"))

    def get_rollout(self, rollout_id: str) -> RolloutRecord:
        row = self.db.execute("select * from rollouts where rollout_id = ?", [rollout_id]).fetchone()
        if row is None:
            raise no_rollout(rollout_id)
        return self._rollout_from_row(dict(zip(ROLLOUT_COLUMNS, row)))

    def find_rollout(self, id_or_prefix: str) -> RolloutRecord:
        """What an operator names: the rollout with this id, or the one whose id starts with it
        (as artifacts take a sha256 prefix). NotFound / InvalidArgument (ambiguous) say which."""
        row = self.db.execute("select * from rollouts where rollout_id = ?", [id_or_prefix]).fetchone()
        if row is None:
            rows = self.db.execute("select * from rollouts where rollout_id like ? escape '\\' order by created desc"
                                   " limit 6", [like_prefix(id_or_prefix)]).fetchall() if id_or_prefix else []
            row = only_prefix_match(id_or_prefix, rows)
        return self._rollout_from_row(dict(zip(ROLLOUT_COLUMNS, row)))

    def list_rollouts(self, states: tuple[RolloutState, ...] = ()) -> list[RolloutRecord]:
        """Newest first."""
        where = f"state in ({', '.join('?' * len(states))})" if states else None
        rows = self.db["rollouts"].rows_where(where, [int(s) for s in states], order_by="created desc")
        return [self._rollout_from_row(row) for row in rows]

    def rollout_counts(self) -> dict[RolloutState, int]:
        rows = self.db.execute("select state, count(*) from rollouts group by state").fetchall()
        return {RolloutState(state): n for state, n in rows}

    def rollouts_of_device(self, device_id: str, states: tuple[RolloutState, ...]) -> list[RolloutRecord]:
        marks = ", ".join("?" * len(states))
        ids = [r[0] for r in self.db.execute(
            f"select r.rollout_id from rollouts r join rollout_devices d using (rollout_id)"
            f" where d.device_id = ? and r.state in ({marks}) order by r.created",
            [device_id, *map(int, states)],
        ).fetchall()]
        return [self.get_rollout(i) for i in ids]

    def _rollout_from_row(self, row: dict) -> RolloutRecord:
        devices = self.db["rollout_devices"].rows_where("rollout_id = ?", [row["rollout_id"]],
                                                        order_by="wave < 0, wave, device_id")
        return rollout_from_rows(row, devices)

    # ---- events ----

    def add_event(self, kind: str, message: str, device_id: str = "", rollout_id: str = "",
                  when: float | None = None) -> EventRecord:
        when = time.time() if when is None else when
        table = self.db.table("events")
        table.insert({"time": when, "kind": kind, "message": message, "device_id": device_id,
                      "rollout_id": rollout_id})
        event_id = table.last_pk
        assert event_id is not None  # set by every insert
        return EventRecord(event_id, when, kind, message, device_id, rollout_id)

    def list_events(self, rollout_id: str = "", device_id: str = "", limit: int = 100) -> list[EventRecord]:
        where, params = [], []
        if rollout_id:
            where.append("rollout_id = ?")
            params.append(rollout_id)
        if device_id:
            where.append("device_id = ?")
            params.append(device_id)
        sql = "select id, time, kind, message, device_id, rollout_id from events"
        if where:
            sql += " where " + " and ".join(where)
        rows = self.db.execute(f"select * from ({sql} order by id desc limit ?) order by id", [*params, limit])
        return [event_from_row(row) for row in rows.fetchall()]


# Pure helpers: the PostgreSQL store (fleet.pg.rollouts) shares them.

ROLLOUT_COLUMNS = ("rollout_id", "artifact_sha256", "state", "spec", "wave", "created", "updated", "reason")
DEVICE_COLUMNS = ("rollout_id", "device_id", "wave", "state", "reason", "gate_metrics", "updated")
EVENT_COLUMNS = ("id", "time", "kind", "message", "device_id", "rollout_id")


def no_artifact(sha256: str) -> NotFound:
    return NotFound(f"no artifact with sha256 {sha256!r} (edgefleet artifact list)")


def no_rollout(rollout_id: str) -> NotFound:
    return NotFound(f"no rollout {rollout_id!r} (edgefleet rollout list)")


def rollout_values(rollout: RolloutRecord) -> list:
    """The `ROLLOUT_COLUMNS` of a new rollout's row, in order."""
    return [rollout.rollout_id, rollout.artifact_sha256, int(rollout.state), json.dumps(rollout.spec.__dict__),
            rollout.wave, rollout.created, rollout.updated, rollout.reason]


def rollout_changes(state: RolloutState | None, wave: int | None, reason: str | None) -> dict:
    """The columns `update_rollout` sets: `updated` (now) and those given."""
    values: dict = {"updated": time.time()}
    if state is not None:
        values["state"] = int(state)
    if wave is not None:
        values["wave"] = wave
    if reason is not None:
        values["reason"] = reason
    return values


def device_row(rollout_id: str, device: RolloutDeviceRecord) -> dict:
    return {"rollout_id": rollout_id, "device_id": device.device_id, "wave": device.wave,
            "state": int(device.state), "reason": device.reason, "gate_metrics": json.dumps(device.gate_metrics),
            "updated": device.updated or time.time()}


def rollout_from_rows(row: dict, device_rows: Iterable[dict]) -> RolloutRecord:
    """A rollout from its row and its devices' rows (in the order they are listed: the canary wave first,
    skipped devices last)."""
    spec = json.loads(row["spec"])
    spec["waves_percent"] = tuple(spec["waves_percent"])
    devices = [
        RolloutDeviceRecord(r["device_id"], r["wave"], DeployState(r["state"]), r["reason"] or "",
                            json.loads(r["gate_metrics"] or "{}"), r["updated"] or 0.0)
        for r in device_rows
    ]
    return RolloutRecord(
        rollout_id=row["rollout_id"], artifact_sha256=row["artifact_sha256"], state=RolloutState(row["state"]),
        spec=RolloutSpec(**spec), wave=row["wave"], created=row["created"], updated=row["updated"],
        reason=row["reason"] or "", devices=devices,
    )


def like_prefix(prefix: str) -> str:
    """A LIKE pattern (escape character \\) matching the strings that start with `prefix`."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def only_prefix_match(prefix: str, rows: Sequence[Sequence]) -> Sequence:
    """The one row (rollout id first) an id prefix matched, newest first in `rows` (at most 6 of them);
    NotFound when none did, InvalidArgument naming them when several did."""
    if not rows:
        raise NotFound(f"no rollout {prefix!r} (edgefleet rollout list shows them)")
    if len(rows) > 1:
        ids = ", ".join(r[0] for r in rows[:5]) + (", …" if len(rows) > 5 else "")
        raise InvalidArgument(f"rollout id prefix {prefix!r} is ambiguous: it matches {ids}; give more of the id")
    return rows[0]


def event_from_row(row: Sequence) -> EventRecord:
    """An event from its `EVENT_COLUMNS`, in order."""
    event_id, when, kind, message, device_id, rollout_id = row
    return EventRecord(event_id, when, kind, message, device_id or "", rollout_id or "")
