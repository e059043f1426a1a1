"""The controller's fleet state in one SQLite file (sqlite-utils, WAL).

Every method is synchronous and must be called from one thread: the controller runs
them on a single-worker executor (`fleet.server.AsyncStore`), which serialises
writes without holding the event loop.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils

from . import auth
from .errors import InvalidArgument, NotFound, Unauthenticated
from .history_store import SQLITE_MAX_INT, HistoryTables
from .rollout_store import RolloutTables

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 3
MQTT_HARDWARE_PREFIX = "mqtt:"
"""Hardware id (and token hash) prefix of devices the MQTT bridge created: no token hashes to it."""


@dataclass
class ObjectRecord:
    track_id: int
    class_id: int
    label: str
    score: float
    xyxy: tuple[float, float, float, float]
    predicted: bool = False


@dataclass
class FrameRecord:
    stream_id: str
    sequence: int
    frame_index: int
    capture_time: float  # unix seconds
    objects: list[ObjectRecord] = field(default_factory=list)
    device_id: str = ""


@dataclass
class DeviceRecord:
    device_id: str
    hostname: str
    hardware_id: str
    enrolled: float
    agent_version: str = ""
    last_seen: float | None = None
    profile: dict = field(default_factory=dict)
    plan: dict = field(default_factory=dict)
    health: dict = field(default_factory=dict)
    streams: list[str] = field(default_factory=list)
    labels: dict = field(default_factory=dict)
    acked_sequence: int = 0
    detections_stored: int = 0
    plan_override: dict = field(default_factory=dict)  # SetPlan as a dict; empty: none


@dataclass(frozen=True)
class SecretRecord:
    """An enrollment key or operator token as listed: its id, never the secret."""

    id: str
    name: str
    created: float
    revoked: bool


@dataclass(frozen=True)
class StoreResult:
    acked_sequence: int
    stored: int
    duplicates: int


class FleetStore(HistoryTables, RolloutTables):
    """`autocheckpoint=False` leaves WAL checkpoints to a `WalCheckpointer` (the controller's)."""

    def __init__(self, path: Path | str, *, autocheckpoint: bool = True):
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        if not autocheckpoint:
            self.db.execute("PRAGMA wal_autocheckpoint=0")
        self._migrate()

    def close(self) -> None:
        self.db.conn.close()

    def _transaction(self, work):
        """`work()` inside one BEGIN IMMEDIATE ... COMMIT (rolled back if it raises); its result.

        The connection autocommits (isolation_level=None), so `with conn:` alone groups nothing.
        Inside, use `conn.execute` only: sqlite-utils' table methods commit on their own.
        """
        conn = self.db.conn
        if conn.in_transaction:
            return work()
        conn.execute("begin immediate")
        try:
            result = work()
        except BaseException:
            conn.execute("rollback")
            raise
        conn.execute("commit")
        return result

    # ---- schema ----

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} has schema version {version}, newer than this controller's {SCHEMA_VERSION}"
            )
        if version < 1:
            with self.db.conn:
                self.db["enroll_keys"].create(
                    {"key_hash": str, "name": str, "created": float, "revoked": int}, pk="key_hash"
                )
                self.db["devices"].create(
                    {
                        "device_id": str, "hostname": str, "hardware_id": str, "enrolled": float,
                        "token_hash": str, "agent_version": str, "last_seen": float,
                        "profile": str, "plan": str, "health": str, "streams": str, "labels": str,
                        "acked_sequence": int, "detections_stored": int,
                    },
                    pk="device_id",
                    not_null={"hostname", "hardware_id", "enrolled", "token_hash"},
                    defaults={"acked_sequence": 0, "detections_stored": 0},
                )
                self.db["devices"].create_index(["hardware_id"], unique=True)
                self.db["devices"].create_index(["token_hash"], unique=True)
                self.db["detections"].create(
                    {
                        "device_id": str, "sequence": int, "stream_id": str, "frame_index": int,
                        "capture_time": float, "received": float, "n_objects": int, "objects": str,
                    },
                    pk=("device_id", "sequence"),
                )
                self.db.execute("PRAGMA user_version=1")
            logger.info("created fleet schema v1 in %s", self.path)
        if version < 2:
            with self.db.conn:
                self.db["operator_tokens"].create(
                    {"key_hash": str, "name": str, "created": float, "revoked": int}, pk="key_hash"
                )
                self.db["devices"].add_column("plan_override", str)
                self.db.execute("PRAGMA user_version=2")
            logger.info("migrated fleet schema to v2 (operator tokens, plan overrides) in %s", self.path)
        if version < 3:
            with self.db.conn:
                self.db["health_samples"].create(
                    {
                        "device_id": str, "time": float, "resolution_s": int, "fps": float, "detect_fps": float,
                        "inference_ms_p95": float, "latency_ms_p95": float, "cpu_percent": float,
                        "temperature_c": float, "frames_dropped": int, "outbox_depth": int,
                    },
                    not_null={"device_id", "time", "resolution_s"},
                )
                self.db["health_samples"].create_index(["device_id", "resolution_s", "time"])
                self.db["detections"].create_index(["received"])
                self.db["artifacts"].create(
                    {"sha256": str, "name": str, "format": str, "size_bytes": int, "manifest": bytes,
                     "signature": bytes, "created": float},
                    pk="sha256", not_null={"manifest", "signature", "size_bytes", "created"},
                )
                self.db["rollouts"].create(
                    {"rollout_id": str, "artifact_sha256": str, "state": int, "spec": bytes, "wave": int,
                     "created": float, "updated": float, "reason": str},
                    pk="rollout_id", not_null={"artifact_sha256", "state", "spec", "created"},
                    foreign_keys=[("artifact_sha256", "artifacts", "sha256")],
                )
                self.db["rollout_devices"].create(
                    {"rollout_id": str, "device_id": str, "wave": int, "state": int, "reason": str,
                     "gate_metrics": str, "updated": float},
                    pk=("rollout_id", "device_id"), foreign_keys=[("rollout_id", "rollouts", "rollout_id")],
                )
                self.db["events"].create(
                    {"id": int, "time": float, "kind": str, "device_id": str, "rollout_id": str, "message": str},
                    pk="id", not_null={"time", "kind", "message"},
                )
                self.db["events"].create_index(["time"])
                self.db.execute("PRAGMA user_version=3")
            logger.info("migrated fleet schema to v3 (health history, artifacts, rollouts, events) in %s", self.path)

    # ---- secrets: enrollment keys and operator tokens ----

    def create_enroll_key(self, name: str = "default", key: str | None = None) -> str:
        return self._create_secret("enroll_keys", auth.ENROLL_KEY_PREFIX, name, key)

    def revoke_enroll_key(self, key_or_id: str) -> SecretRecord:
        """Refuse the key from now on; devices already enrolled with it keep their tokens."""
        return self._revoke_secret("enroll_keys", "enrollment key", key_or_id)

    def list_enroll_keys(self) -> list[SecretRecord]:
        return self._list_secrets("enroll_keys")

    def create_operator_token(self, name: str = "operator") -> str:
        return self._create_secret("operator_tokens", auth.OPERATOR_TOKEN_PREFIX, name)

    def revoke_operator_token(self, token_or_id: str) -> SecretRecord:
        return self._revoke_secret("operator_tokens", "operator token", token_or_id)

    def list_operator_tokens(self) -> list[SecretRecord]:
        return self._list_secrets("operator_tokens")

    def _create_secret(self, table: str, prefix: str, name: str, secret: str | None = None) -> str:
        secret = secret or auth.new_secret(prefix)
        self.db[table].upsert(
            {"key_hash": auth.hash_secret(secret), "name": name, "created": time.time(), "revoked": 0},
            pk="key_hash",
        )
        return secret

    def _revoke_secret(self, table: str, what: str, secret_or_id: str) -> SecretRecord:
        """Revoke by the id `list` shows, or by the secret itself."""
        where = "substr(key_hash, 1, 12) = ? or key_hash = ?"
        params = [secret_or_id, auth.hash_secret(secret_or_id)]
        with self.db.conn:
            if not self.db.execute(f"update {table} set revoked = 1 where {where}", params).rowcount:
                raise NotFound(f"no {what} with id {secret_or_id!r}")
        (row,) = self.db[table].rows_where(where, params)
        return _secret_from_row(row)

    def _list_secrets(self, table: str) -> list[SecretRecord]:
        return [_secret_from_row(row) for row in self.db[table].rows_where(order_by="created")]

    def principal_for_token(self, token: str) -> auth.Principal | None:
        """The device or operator a bearer token belongs to; None when unknown or revoked.

        A device's token is revoked by re-enrolling the device (which rotates it).
        """
        token_hash = auth.hash_secret(token)
        row = self.db.execute("select device_id from devices where token_hash = ?", [token_hash]).fetchone()
        if row:
            return auth.Principal(auth.Role.DEVICE, row[0])
        row = self.db.execute(
            "select key_hash from operator_tokens where key_hash = ? and revoked = 0", [token_hash]
        ).fetchone()
        if row:
            return auth.Principal(auth.Role.OPERATOR, auth.secret_id(row[0]))
        return None

    # ---- enrollment ----

    def enroll(
        self,
        enroll_key: str,
        hardware_id: str,
        hostname: str,
        agent_version: str,
        profile: dict,
        labels: dict,
    ) -> tuple[DeviceRecord, str]:
        """Exchange an enrollment key for (device, token). Re-enrolling a box keeps its device id."""
        if not hardware_id:
            raise InvalidArgument("hardware_id is empty")
        rows = list(self.db["enroll_keys"].rows_where("key_hash = ? and revoked = 0", [auth.hash_secret(enroll_key)]))
        if not rows:
            raise Unauthenticated("unknown or revoked enrollment key")
        token = auth.new_secret(auth.DEVICE_TOKEN_PREFIX)
        existing = list(self.db["devices"].rows_where("hardware_id = ?", [hardware_id]))
        with self.db.conn:
            if existing:
                device_id = existing[0]["device_id"]
                self.db["devices"].update(
                    device_id,
                    {"token_hash": auth.hash_secret(token), "hostname": hostname, "agent_version": agent_version,
                     "profile": json.dumps(profile), "labels": json.dumps(labels)},
                )
            else:
                device_id = self._new_device_id(hostname)
                self.db["devices"].insert(
                    {
                        "device_id": device_id, "hostname": hostname, "hardware_id": hardware_id,
                        "enrolled": time.time(), "token_hash": auth.hash_secret(token),
                        "agent_version": agent_version, "profile": json.dumps(profile),
                        "labels": json.dumps(labels), "plan": "{}", "health": "{}", "streams": "[]",
                    }
                )
        logger.info("enrolled %s (%s) with key %r", device_id, hostname, rows[0]["name"])
        return self.get_device(device_id), token

    def _new_device_id(self, hostname: str) -> str:
        base = "".join(c if c.isalnum() or c == "-" else "-" for c in hostname.lower()).strip("-")[:24] or "device"
        return f"{base}-{uuid.uuid4().hex[:6]}"

    # ---- sessions ----

    def record_hello(
        self, device_id: str, agent_version: str, profile: dict, plan: dict, streams: list[str]
    ) -> DeviceRecord:
        self._require(device_id)
        self.db["devices"].update(
            device_id,
            {"agent_version": agent_version, "profile": json.dumps(profile), "plan": json.dumps(plan),
             "streams": json.dumps(streams), "last_seen": time.time()},
        )
        return self._require(device_id)

    def record_heartbeat(
        self, device_id: str, health: dict, plan: dict | None, *, now: float | None = None
    ) -> DeviceRecord:
        """Keep the device's latest health (and plan), and append the health to its history as one
        raw sample (resolution 0) stamped with the controller's clock, in the same transaction."""
        now = time.time() if now is None else now
        sets, params = "health = ?, last_seen = ?", [json.dumps(health), now]
        if plan:
            sets += ", plan = ?"
            params.append(json.dumps(plan))
        conn = self.db.conn

        def write() -> None:
            if not conn.execute(f"update devices set {sets} where device_id = ?", [*params, device_id]).rowcount:
                raise NotFound(f"device {device_id!r} is not enrolled")
            conn.execute(self._HEALTH_INSERT, [device_id, now, 0, *self._health_values(health)])

        self._transaction(write)
        return self._require(device_id)

    def set_plan_override(self, device_id: str, override: dict) -> DeviceRecord:
        """Store the operator's SetPlan for the device (as a dict); an empty dict removes it."""
        self._require(device_id)
        self.db["devices"].update(device_id, {"plan_override": json.dumps(override)})
        return self._require(device_id)

    def upsert_mqtt_device(self, device_id: str, *, available: str | None = None, health: dict | None = None,
                           stream_id: str | None = None) -> DeviceRecord | None:
        """A device that speaks MQTT only, as `fleet.mqtt_bridge` hears it: created on first sight
        (hardware id `mqtt:<id>`, no token: it can never open a gRPC session), then kept current.
        `available` goes to its labels; anything but `offline` counts as seen. A device enrolled
        over gRPC is left alone (its session is the truth): returns None."""
        row = self.db.execute("select hardware_id from devices where device_id = ?", [device_id]).fetchone()
        if row is not None and not row[0].startswith(MQTT_HARDWARE_PREFIX):
            return None
        now = time.time()
        with self.db.conn:
            if row is None:
                self.db["devices"].insert({
                    "device_id": device_id, "hostname": device_id, "hardware_id": MQTT_HARDWARE_PREFIX + device_id,
                    "enrolled": now, "token_hash": MQTT_HARDWARE_PREFIX + device_id, "agent_version": "",
                    "profile": "{}", "plan": "{}", "health": "{}", "streams": "[]",
                    "labels": json.dumps({"transport": "mqtt"}),
                })
                logger.info("MQTT-only device %s joined the fleet", device_id)
            device = self._require(device_id)
            values: dict = {} if available == "offline" else {"last_seen": now}
            if available is not None:
                values["labels"] = json.dumps({**device.labels, "available": available})
            if health is not None:
                values["health"] = json.dumps(health)
            if stream_id and stream_id not in device.streams:
                values["streams"] = json.dumps([*device.streams, stream_id])
            if values:
                self.db["devices"].update(device_id, values)
        return self._require(device_id)

    # ---- detections ----

    def store_frames(self, device_id: str, frames: list[FrameRecord]) -> StoreResult:
        """Commit a batch; idempotent on (device id, sequence). Acks the highest committed sequence.

        The agent sends in ascending order on one stream, so once this batch is committed every
        sequence up to its highest is either in the store or was never produced.
        """
        (result,) = self.store_frames_many([(device_id, frames)])
        if isinstance(result, Exception):
            raise result
        return result

    def store_frames_many(
        self, batches: list[tuple[str, list[FrameRecord]]]
    ) -> list[StoreResult | InvalidArgument | NotFound]:
        """Commit many devices' batches in one transaction (`fleet.ingest`'s group commit).

        One result per batch, in order: what `store_frames` would have returned for it alone
        (batches of one device see each other in order), or the error it would have raised.
        Every batch is validated before the transaction, so a bad one (unknown device, bad
        sequence) is refused alone and the others commit. Should the shared transaction still
        fail, each batch is retried in a transaction of its own, so only the culprit fails.
        """
        now = time.time()
        results: list = [None] * len(batches)
        acked = self._acked_sequences({device_id for device_id, _ in batches})
        valid: list[tuple[int, str, list[tuple]]] = []
        for i, (device_id, frames) in enumerate(batches):
            try:
                if device_id not in acked:
                    raise NotFound(f"device {device_id!r} is not enrolled")
                valid.append((i, device_id, self._frame_rows(device_id, frames, now)))
            except (InvalidArgument, NotFound) as err:
                results[i] = err
        try:
            self._commit_frames(valid, dict(acked), now, results)
        except sqlite3.Error:
            if len(valid) <= 1:
                raise
            logger.warning("group commit of %d batches failed; committing them one by one", len(valid), exc_info=True)
            for item in valid:
                device_id = item[1]
                try:
                    acked = self._acked_sequences({device_id})
                    if device_id not in acked:
                        raise NotFound(f"device {device_id!r} is not enrolled")
                    self._commit_frames([item], acked, now, results)
                except (sqlite3.Error, NotFound) as err:
                    results[item[0]] = err
        return results

    def _acked_sequences(self, device_ids: set[str]) -> dict[str, int]:
        """Acked sequence of each enrolled device among `device_ids` (absent: not enrolled).

        Each query answers in one row (json_group_object): every row SQLite steps through hands
        the GIL away and waits to get it back, up to 5 ms while the event loop thread is busy.
        """
        ids = list(device_ids)
        acked: dict[str, int] = {}
        for start in range(0, len(ids), 500):  # 500 parameters: under SQLite's oldest limit (999)
            chunk = ids[start:start + 500]
            (text,) = self.db.conn.execute(
                "select json_group_object(device_id, coalesce(acked_sequence, 0)) from devices"
                f" where device_id in ({', '.join('?' * len(chunk))})", chunk).fetchone()
            acked.update(json.loads(text))
        return acked

    def _stored_keys(self, keys: list[tuple[str, int]]) -> set[tuple[str, int]]:
        """Which (device id, sequence) pairs the detections table holds already; one row per query."""
        present: set[tuple[str, int]] = set()
        for start in range(0, len(keys), 400):
            chunk = keys[start:start + 400]
            (text,) = self.db.conn.execute(
                "select json_group_array(json_array(d.device_id, d.sequence)) from (values "
                + ", ".join(["(?, ?)"] * len(chunk))
                + ") as v cross join detections as d on d.device_id = v.column1 and d.sequence = v.column2",
                [v for key in chunk for v in key]).fetchone()
            present.update((device_id, sequence) for device_id, sequence in json.loads(text))
        return present

    def _frame_rows(self, device_id: str, frames: list[FrameRecord], now: float) -> list[tuple]:
        rows = []
        objects_json = self._objects_json
        top = SQLITE_MAX_INT  # the wire allows uint64
        for frame in frames:
            if not 1 <= frame.sequence <= top:
                raise InvalidArgument(f"frames[].sequence must be in 1..{top}, got {frame.sequence}")
            if not 0 <= frame.frame_index <= top:
                raise InvalidArgument(f"frames[].frame_index must be in 0..{top}, got {frame.frame_index}")
            rows.append((
                device_id, frame.sequence, frame.stream_id, frame.frame_index, frame.capture_time, now,
                len(frame.objects), objects_json(frame.objects),
            ))
        return rows

    def _commit_frames(self, valid: list[tuple[int, str, list[tuple]]], acked: dict[str, int], now: float,
                       results: list) -> None:
        """One transaction for the validated batches; fills their slots in `results` once it commits.

        An explicit BEGIN: the connection is in autocommit mode (isolation_level=None), where
        `with conn:` opens no transaction and every inserted row would commit on its own.
        A few statements per group, whatever its size (which rows are duplicates: one query;
        the new rows: one INSERT per 400; the devices: one UPDATE per 300), because each SQLite
        step gives the GIL away: one statement per row costs milliseconds per row under load.
        """
        conn = self.db.conn
        done: list[tuple[int, StoreResult]] = []
        new_rows: list[tuple] = []
        stored_by_device: dict[str, int] = {}
        conn.execute("begin immediate")  # the write lock first: nothing changes between the check and the insert
        try:
            present = self._stored_keys([(row[0], row[1]) for _, _, rows in valid for row in rows])
            for i, device_id, rows in valid:
                if not rows:
                    done.append((i, StoreResult(acked[device_id], 0, 0)))
                    continue
                lowest = min(r[1] for r in rows)
                if lowest > acked[device_id] + 1 and acked[device_id]:
                    logger.warning(
                        "device %s skipped sequences %d..%d", device_id, acked[device_id] + 1, lowest - 1
                    )
                stored = 0
                for row in rows:
                    key = (device_id, row[1])
                    if key not in present:  # a replay, or a repeat within this group, is a duplicate
                        present.add(key)
                        new_rows.append(row)
                        stored += 1
                acked[device_id] = max(acked[device_id], max(r[1] for r in rows))
                stored_by_device[device_id] = stored_by_device.get(device_id, 0) + stored
                done.append((i, StoreResult(acked_sequence=acked[device_id], stored=stored,
                                            duplicates=len(rows) - stored)))
            before = conn.total_changes
            for start in range(0, len(new_rows), 100):  # 100 rows: 800 parameters, under SQLite's oldest limit
                chunk = new_rows[start:start + 100]
                conn.execute(self._insert_frames_sql(len(chunk)), [v for row in chunk for v in row])
            if conn.total_changes - before != len(new_rows):  # never acknowledge a row that is not there
                raise sqlite3.IntegrityError(
                    f"stored {conn.total_changes - before} of {len(new_rows)} new detection rows")
            devices = list(stored_by_device.items())
            for start in range(0, len(devices), 300):
                chunk = devices[start:start + 300]
                conn.execute(
                    "update devices set acked_sequence = v.column2, detections_stored = detections_stored + v.column3,"
                    " last_seen = ? from (values " + ", ".join(["(?, ?, ?)"] * len(chunk)) + ") as v"
                    " where devices.device_id = v.column1",
                    [now, *(v for device_id, stored in chunk for v in (device_id, acked[device_id], stored))],
                )
            conn.execute("commit")
        except BaseException:
            if conn.in_transaction:
                conn.execute("rollback")
            raise
        for i, result in done:
            results[i] = result

    @staticmethod
    def _insert_frames_sql(n_rows: int) -> str:
        """One INSERT of `n_rows` rows: one SQLite step, where `executemany` takes one per row and
        hands the GIL to the event loop thread and back around each (slow when that one is busy)."""
        return ("insert or ignore into detections (device_id, sequence, stream_id, frame_index, capture_time,"
                " received, n_objects, objects) values " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * n_rows))

    @staticmethod
    def _objects_json(objects: list[ObjectRecord]) -> str:
        """`json.dumps([_object_to_json(o) for o in objects])`, the same values, ~4x faster.

        ".5f" and ".2f" round exactly as `round(v, 5)` and `round(v, 2)` do (both round the
        binary value correctly), so `json.loads` reads back the very same floats; a non-finite
        number takes the `json.dumps` path (which writes NaN/Infinity).
        """
        quote = json.encoder.encode_basestring_ascii  # what json.dumps does to a str
        parts = []
        for o in objects:
            x1, y1, x2, y2 = o.xyxy
            score = o.score
            total = score + x1 + y1 + x2 + y2
            if total - total != 0.0:  # inf or nan somewhere
                return json.dumps([_object_to_json(obj) for obj in objects])
            parts.append(f"[{o.track_id:d}, {o.class_id:d}, {quote(o.label)}, {score:.5f}, "
                         f"[{x1:.2f}, {y1:.2f}, {x2:.2f}, {y2:.2f}], {1 if o.predicted else 0}]")
        return "[" + ", ".join(parts) + "]"

    def list_detections(
        self, device_id: str, stream_id: str = "", after_sequence: int = 0, limit: int = 100
    ) -> tuple[list[FrameRecord], int]:
        device = self._require(device_id)
        after_sequence = min(after_sequence, SQLITE_MAX_INT)  # no stored sequence is above it
        where, params = "device_id = ?", [device_id]
        if stream_id:
            where += " and stream_id = ?"
            params.append(stream_id)
        if after_sequence:
            sql = f"select * from detections where {where} and sequence > ? order by sequence limit ?"
            params += [after_sequence, limit]
        else:  # the newest `limit`, returned oldest first
            sql = (f"select * from (select * from detections where {where} order by sequence desc limit ?)"
                   " order by sequence")
            params.append(limit)
        cursor = self.db.execute(sql, params)
        columns = [c[0] for c in cursor.description]
        frames = [_frame_from_row(dict(zip(columns, row))) for row in cursor.fetchall()]
        return frames, device.detections_stored

    # ---- reads ----

    def list_devices(self) -> list[DeviceRecord]:
        return [_device_from_row(row) for row in self.db["devices"].rows_where(order_by="device_id")]

    def get_device(self, device_id: str) -> DeviceRecord:
        return self._require(device_id)

    def last_seen_by_device(self) -> dict[str, float | None]:
        """Every device's last-seen time; what the presence sweep reads each second."""
        return dict(self.db.execute("select device_id, last_seen from devices").fetchall())

    def _require(self, device_id: str) -> DeviceRecord:
        # plain SQL: this runs after every heartbeat, and sqlite-utils' Table.get reads the schema each time
        cursor = self.db.conn.execute("select * from devices where device_id = ?", [device_id])
        row = cursor.fetchone()
        if row is None:
            raise NotFound(f"device {device_id!r} is not enrolled")
        return _device_from_row(dict(zip((c[0] for c in cursor.description), row)))


class WalCheckpointer:
    """Copies the WAL back into the database from its own connection and thread, every `every_s`.

    SQLite's automatic checkpoint runs inside the commit that crosses 1,000 pages, on the writer's
    thread, fsync included: at 20,000 detections/s that stalled a group commit (and every ack
    waiting on it) for up to a third of a second. A PASSIVE checkpoint here never blocks the
    writer; it copies what no reader still needs and leaves the rest for the next round.
    """

    def __init__(self, path: Path | str, every_s: float = 1.0):
        self.path, self.every_s = Path(path), every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fleet-db-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=5.0)
        try:
            while not self._stop.wait(self.every_s):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as err:  # busy or locked: the next round tries again
                    logger.debug("WAL checkpoint skipped: %s", err)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # leave a small WAL behind
        except sqlite3.Error as err:
            logger.warning("final WAL checkpoint failed: %s", err)
        finally:
            conn.close()


def _object_to_json(obj: ObjectRecord) -> list:
    return [obj.track_id, obj.class_id, obj.label, round(obj.score, 5),
            [round(v, 2) for v in obj.xyxy], int(obj.predicted)]


def _frame_from_row(row: dict) -> FrameRecord:
    objects = [
        ObjectRecord(track_id=t, class_id=c, label=lbl, score=s, xyxy=tuple(box), predicted=bool(p))
        for t, c, lbl, s, box, p in json.loads(row["objects"])
    ]
    return FrameRecord(
        stream_id=row["stream_id"], sequence=row["sequence"], frame_index=row["frame_index"],
        capture_time=row["capture_time"], objects=objects, device_id=row["device_id"],
    )


def _device_from_row(row: dict) -> DeviceRecord:
    return DeviceRecord(
        device_id=row["device_id"], hostname=row["hostname"], hardware_id=row["hardware_id"],
        enrolled=row["enrolled"], agent_version=row["agent_version"] or "", last_seen=row["last_seen"],
        profile=json.loads(row["profile"] or "{}"), plan=json.loads(row["plan"] or "{}"),
        health=json.loads(row["health"] or "{}"), streams=json.loads(row["streams"] or "[]"),
        labels=json.loads(row["labels"] or "{}"), acked_sequence=row["acked_sequence"] or 0,
        detections_stored=row["detections_stored"] or 0,
        plan_override=json.loads(row["plan_override"] or "{}"),
    )


def _secret_from_row(row: dict) -> SecretRecord:
    return SecretRecord(auth.secret_id(row["key_hash"]), row["name"], row["created"], bool(row["revoked"]))
