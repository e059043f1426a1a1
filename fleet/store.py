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

from . import auth, schema
from .audit_store import AuditTables
from .decommission_store import DecommissionTables
from .detection_store import DetectionTables
from .errors import InvalidArgument, NotFound, Unauthenticated
from .history_store import HistoryTables
from .object_store import ObjectTables
from .rollout_store import RolloutTables
from .selectors import Selector, check_label
from .twin_store import DEVICE_COLUMNS, DEVICE_FROM, ConfigTables, config_of_row

logger = logging.getLogger(__name__)

SCHEMA_VERSION = schema.SCHEMA_VERSION
MQTT_HARDWARE_PREFIX = "mqtt:"
"""Hardware id (and token hash) prefix of devices the MQTT bridge created: no token hashes to it."""


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
    reported_labels: dict = field(default_factory=dict)  # the device's own: --label, agent.yaml labels:
    acked_sequence: int = 0
    detections_stored: int = 0
    plan_override: dict = field(default_factory=dict)  # SetPlan as a dict; empty: none
    operator_labels: dict = field(default_factory=dict)  # SetDeviceLabels'; they win over the device's own
    revoked: float | None = None  # when its token was revoked (RevokeDevice); None: never, or enrolled again since
    config: dict = field(default_factory=dict)  # desired configuration and the reported status (fleet.twin_store)

    @property
    def labels(self) -> dict[str, str]:
        """What selectors match: the device's own labels overlaid by the operator's."""
        return {**self.reported_labels, **self.operator_labels}


@dataclass(frozen=True)
class SecretRecord:
    """An enrollment key or operator token as listed: its id, never the secret."""

    id: str
    name: str
    created: float
    revoked: bool
    role: str = ""  # an operator token's role (viewer, operator, admin); empty for enrollment keys


class SecretMethods:
    """Enrollment keys and operator tokens, as both stores offer them; each store writes its own table rows
    (`_create_secret`, `_revoke_secret`, `_list_secrets`)."""

    def create_enroll_key(self, name: str = "default", key: str | None = None) -> str:
        return self._create_secret("enroll_keys", auth.ENROLL_KEY_PREFIX, name, key)

    def revoke_enroll_key(self, key_or_id: str) -> SecretRecord:
        """Refuse the key from now on; devices already enrolled with it keep their tokens."""
        return self._revoke_secret("enroll_keys", "enrollment key", key_or_id)

    def list_enroll_keys(self) -> list[SecretRecord]:
        return self._list_secrets("enroll_keys")

    def create_operator_token(self, name: str = "operator", access: auth.Access = auth.DEFAULT_ACCESS) -> str:
        return self._create_secret("operator_tokens", auth.OPERATOR_TOKEN_PREFIX, name, role=access.label)

    def revoke_operator_token(self, token_or_id: str) -> SecretRecord:
        return self._revoke_secret("operator_tokens", "operator token", token_or_id)

    def list_operator_tokens(self) -> list[SecretRecord]:
        return self._list_secrets("operator_tokens")

    def _create_secret(self, table: str, prefix: str, name: str, secret: str | None = None, **columns) -> str:
        raise NotImplementedError

    def _revoke_secret(self, table: str, what: str, secret_or_id: str) -> SecretRecord:
        raise NotImplementedError

    def _list_secrets(self, table: str) -> list[SecretRecord]:
        raise NotImplementedError


class FleetStore(SecretMethods, DetectionTables, ObjectTables, HistoryTables, RolloutTables, DecommissionTables,
                 AuditTables, ConfigTables):
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
        try:
            self._migrate()
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        self.db.conn.close()

    # ---- schema ----

    def _migrate(self) -> None:
        """Run the schema steps this file lacks, each in a transaction of its own with its version bump.

        The version is read again under the write lock, so two processes opening the same new file
        run each step once.
        """
        conn = self.db.conn
        steps = schema.MIGRATIONS
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(steps):
            raise RuntimeError(f"{self.path} has schema version {version}, newer than this controller's {len(steps)}")
        for target, step in enumerate(steps[version:], start=version + 1):

            def apply(target: int = target, step: schema.Step = step) -> bool:
                if conn.execute("PRAGMA user_version").fetchone()[0] >= target:
                    return False  # another process ran it meanwhile
                for statement in step.statements:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={target}")
                return True

            if self._transaction(apply):
                logger.info("migrated fleet schema to v%d (%s) in %s", target, step.summary, self.path)

    # ---- secrets: enrollment keys and operator tokens ----

    def _create_secret(self, table: str, prefix: str, name: str, secret: str | None = None, **columns) -> str:
        secret = secret or auth.new_secret(prefix)
        self.db.table(table).upsert(
            {"key_hash": auth.hash_secret(secret), "name": name, "created": time.time(), "revoked": 0, **columns},
            pk="key_hash",
        )
        return secret

    def _revoke_secret(self, table: str, what: str, secret_or_id: str) -> SecretRecord:
        """Revoke by the id `list` shows, or by the secret itself."""
        where = "substr(key_hash, 1, 12) = ? or key_hash = ?"
        params = [secret_or_id, auth.hash_secret(secret_or_id)]
        if not self.db.execute(f"update {table} set revoked = 1 where {where}", params).rowcount:
            raise NotFound(f"no {what} with id {secret_or_id!r}")
        (row,) = self.db.table(table).rows_where(where, params)
        return secret_from_row(row)

    def _list_secrets(self, table: str) -> list[SecretRecord]:
        return [secret_from_row(row) for row in self.db.table(table).rows_where(order_by="created")]

    def principal_for_token(self, token: str) -> auth.Principal | None:
        """The device or operator a bearer token belongs to; None when unknown or revoked.

        A device's token is revoked by re-enrolling the device (which rotates it) or by RevokeDevice.
        """
        token_hash = auth.hash_secret(token)
        row = self.db.execute("select device_id from devices where token_hash = ? and revoked is null",
                              [token_hash]).fetchone()
        if row:
            return auth.Principal(auth.Role.DEVICE, row[0])
        row = self.db.execute(
            "select key_hash, name, role from operator_tokens where key_hash = ? and revoked = 0", [token_hash]
        ).fetchone()
        if row:
            return auth.Principal(auth.Role.OPERATOR, auth.secret_id(row[0]), row[1] or "", auth.Access.parse(row[2]))
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
        """Exchange an enrollment key for (device, token). Re-enrolling a box keeps its device id,
        also after RevokeDevice (which the new token ends: the hardware id is the key)."""
        if not hardware_id:
            raise InvalidArgument("hardware_id is empty")
        rows = list(self.db["enroll_keys"].rows_where("key_hash = ? and revoked = 0", [auth.hash_secret(enroll_key)]))
        if not rows:
            raise Unauthenticated("unknown or revoked enrollment key")
        token = auth.new_secret(auth.DEVICE_TOKEN_PREFIX)
        values = enrollment_values(token, hostname, agent_version, profile, labels)
        existing = list(self.db["devices"].rows_where("hardware_id = ?", [hardware_id]))
        if existing:  # one statement either way: nothing to group
            device_id = existing[0]["device_id"]
            self.db.table("devices").update(device_id, values)
        else:
            device_id = new_device_id(hostname)
            self.db.table("devices").insert(new_device_row(device_id, hardware_id, time.time(), values))
        logger.info("enrolled %s (%s) with key %r", device_id, hostname, rows[0]["name"])
        return self.get_device(device_id), token

    # ---- sessions ----

    def record_hello(
        self, device_id: str, agent_version: str, profile: dict, plan: dict, streams: list[str],
        labels: dict[str, str] | None = None,
    ) -> DeviceRecord:
        """`labels`: the device's own labels as its Hello reports them; they replace the stored ones
        (None leaves them), so a label dropped from the agent's flags or file is gone at its next start."""
        self._require(device_id)
        values = hello_values(agent_version, profile, plan, streams, labels, time.time())
        self.db.table("devices").update(device_id, values)
        return self._require(device_id)

    def set_operator_labels(self, device_id: str, set_labels: dict[str, str], remove: list[str]) -> DeviceRecord:
        """Set and remove the operator's labels of a device; InvalidArgument (nothing written) when a label
        is malformed, a key is both set and removed, or a removed key is only the device's own label."""
        labels = operator_labels_after(self._require(device_id), set_labels, remove)
        self.db.table("devices").update(device_id, {"operator_labels": json.dumps(labels)})
        return self._require(device_id)

    def devices_matching(self, selector: Selector) -> list[DeviceRecord]:
        """The devices whose labels (the device's own overlaid by the operator's) the selector matches,
        by device id; every device for an empty selector. Build the selector with `fleet.selectors`
        (`parse_selector(text)`, or `combined(request.selector, request.select)` for a request)."""
        return [device for device in self.list_devices() if selector.matches(device.labels)]

    def record_heartbeat(
        self, device_id: str, health: dict, plan: dict | None, *, now: float | None = None
    ) -> DeviceRecord:
        """Keep the device's latest health (and plan), and append the health to its history as one
        raw sample (resolution 0) stamped with the controller's clock, in the same transaction."""
        now = time.time() if now is None else now
        values = heartbeat_values(health, plan, now)
        sets = ", ".join(f"{column} = ?" for column in values)
        conn = self.db.conn

        def write() -> None:
            if not conn.execute(f"update devices set {sets} where device_id = ?",
                                [*values.values(), device_id]).rowcount:
                raise NotFound(f"device {device_id!r} is not enrolled")
            conn.execute(self._HEALTH_INSERT, [device_id, now, 0, *self._health_values(health)])

        self._transaction(write)
        return self._require(device_id)

    def set_plan_override(self, device_id: str, override: dict) -> DeviceRecord:
        """Store the operator's SetPlan for the device (as a dict); an empty dict removes it."""
        self._require(device_id)
        self.db.table("devices").update(device_id, {"plan_override": json.dumps(override)})
        return self._require(device_id)

    def upsert_mqtt_device(self, device_id: str, *, available: str | None = None, health: dict | None = None,
                           stream_id: str | None = None) -> DeviceRecord | None:
        """A device that speaks MQTT only, as `fleet.mqtt_bridge` hears it: created on first sight
        (hardware id `mqtt:<id>`, no token: it can never open a gRPC session), then kept current.
        `available` goes to its labels; anything but `offline` counts as seen. A device enrolled
        over gRPC is left alone (its session is the truth), and so is a revoked MQTT-only device (it
        stays as it was until removed): returns None."""
        row = self.db.execute("select hardware_id, revoked from devices where device_id = ?", [device_id]).fetchone()
        if row is not None and not bridge_may_update(row[0], row[1]):
            return None
        now, conn = time.time(), self.db.conn

        def write() -> None:  # plain SQL: sqlite-utils' table methods would commit half-way
            if row is None:
                new = mqtt_device_row(device_id, now)
                conn.execute(f"insert into devices ({', '.join(new)}) values ({', '.join('?' * len(new))})",
                             list(new.values()))
            values = mqtt_changes(self._require(device_id), now, available, health, stream_id)
            if values:
                conn.execute(f"update devices set {', '.join(f'{column} = ?' for column in values)}"
                             " where device_id = ?", [*values.values(), device_id])

        self._transaction(write)
        if row is None:
            logger.info("MQTT-only device %s joined the fleet", device_id)
        return self._require(device_id)

    # ---- reads ----

    def list_devices(self) -> list[DeviceRecord]:
        return self._devices()

    def get_device(self, device_id: str) -> DeviceRecord:
        return self._require(device_id)

    def last_seen_by_device(self) -> dict[str, float | None]:
        """Every device's last-seen time; what the presence sweep reads each second."""
        return dict(self.db.execute("select device_id, last_seen from devices").fetchall())

    def _require(self, device_id: str) -> DeviceRecord:
        found = self._devices("where device_id = ?", [device_id])
        if not found:
            raise NotFound(f"device {device_id!r} is not enrolled")
        return found[0]

    def _devices(self, where: str = "", params: list[str] | None = None) -> list[DeviceRecord]:
        """Devices with their desired configuration, by device id.

        Plain SQL: `_require` runs after every heartbeat, and sqlite-utils' Table.get reads the schema each time."""
        cursor = self.db.conn.execute(f"select {DEVICE_COLUMNS} from {DEVICE_FROM} {where} order by device_id",
                                      params or [])
        names = [c[0] for c in cursor.description]
        return [device_from_row(dict(zip(names, row))) for row in cursor.fetchall()]


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


def device_from_row(row: dict) -> DeviceRecord:
    """A device read with `twin_store.DEVICE_COLUMNS` (JSON columns as text) as its record."""
    return DeviceRecord(
        device_id=row["device_id"], hostname=row["hostname"], hardware_id=row["hardware_id"],
        enrolled=row["enrolled"], agent_version=row["agent_version"] or "", last_seen=row["last_seen"],
        profile=json.loads(row["profile"] or "{}"), plan=json.loads(row["plan"] or "{}"),
        health=json.loads(row["health"] or "{}"), streams=json.loads(row["streams"] or "[]"),
        reported_labels=json.loads(row["labels"] or "{}"), acked_sequence=row["acked_sequence"] or 0,
        detections_stored=row["detections_stored"] or 0,
        plan_override=json.loads(row["plan_override"] or "{}"),
        operator_labels=json.loads(row.get("operator_labels") or "{}"),
        revoked=row.get("revoked"), config=config_of_row(row),
    )


def secret_from_row(row: dict) -> SecretRecord:
    return SecretRecord(auth.secret_id(row["key_hash"]), row["name"], row["created"], bool(row["revoked"]),
                        row.get("role") or "")


# ---- what both backends write: pure functions of the arguments (fleet.pg.devices uses them too) ----


def new_device_id(hostname: str) -> str:
    """A new device's id: its hostname in lower case, letters, digits and dashes only, and a random suffix."""
    base = "".join(c if c.isalnum() or c == "-" else "-" for c in hostname.lower()).strip("-")[:24] or "device"
    return f"{base}-{uuid.uuid4().hex[:6]}"


def enrollment_values(token: str, hostname: str, agent_version: str, profile: dict, labels: dict) -> dict:
    """The columns every enrollment writes, a first one or again: the new token's hash, what the box
    says of itself, and no revocation."""
    return {"token_hash": auth.hash_secret(token), "hostname": hostname, "agent_version": agent_version,
            "profile": json.dumps(profile), "labels": json.dumps(labels), "revoked": None}


def new_device_row(device_id: str, hardware_id: str, enrolled: float, values: dict) -> dict:
    """The row a first enrollment inserts: `enrollment_values` and what only a new device has."""
    return {"device_id": device_id, "hardware_id": hardware_id, "enrolled": enrolled, **values,
            "plan": "{}", "health": "{}", "streams": "[]"}


def hello_values(agent_version: str, profile: dict, plan: dict, streams: list[str], labels: dict[str, str] | None,
                 now: float) -> dict:
    """The columns a Hello sets (`labels` None: the stored ones stay)."""
    values = {"agent_version": agent_version, "profile": json.dumps(profile), "plan": json.dumps(plan),
              "streams": json.dumps(streams), "last_seen": now}
    if labels is not None:
        values["labels"] = json.dumps(labels)
    return values


def heartbeat_values(health: dict, plan: dict | None, now: float) -> dict:
    """The columns a heartbeat sets: its health, the time, and its plan when it carries one."""
    values: dict = {"health": json.dumps(health), "last_seen": now}
    if plan:
        values["plan"] = json.dumps(plan)
    return values


def operator_labels_after(device: DeviceRecord, set_labels: dict[str, str], remove: list[str]) -> dict[str, str]:
    """The device's operator labels once `set_labels` are set and `remove` removed; InvalidArgument when a label
    is malformed, a key is both set and removed, or a removed key is only the device's own label."""
    for key, value in set_labels.items():
        check_label(key, value)
    both = sorted(set(set_labels) & set(remove))
    if both:
        raise InvalidArgument(f"label {both[0]!r} is both set and removed; do one or the other")
    own_only = sorted(k for k in remove if k not in device.operator_labels and k in device.reported_labels)
    if own_only:
        key = own_only[0]
        raise InvalidArgument(
            f"label {key}={device.reported_labels[key]} is the device's own (its --label or agent.yaml), not an "
            f"operator label: change it on the device, or override it with `device label {device.device_id} {key}=...`")
    return {k: v for k, v in device.operator_labels.items() if k not in remove} | set_labels


def bridge_may_update(hardware_id: str, revoked: float | None) -> bool:
    """Whether the MQTT bridge keeps this existing device current: only an MQTT-only one that is not revoked."""
    return hardware_id.startswith(MQTT_HARDWARE_PREFIX) and revoked is None


def mqtt_device_row(device_id: str, now: float) -> dict:
    """The row of an MQTT-only device the bridge sees first: hardware id and token hash `mqtt:<id>`."""
    return {"device_id": device_id, "hostname": device_id, "hardware_id": MQTT_HARDWARE_PREFIX + device_id,
            "enrolled": now, "token_hash": MQTT_HARDWARE_PREFIX + device_id, "agent_version": "", "profile": "{}",
            "plan": "{}", "health": "{}", "streams": "[]", "labels": json.dumps({"transport": "mqtt"})}


def mqtt_changes(device: DeviceRecord, now: float, available: str | None, health: dict | None,
                 stream_id: str | None) -> dict:
    """The columns of an MQTT-only device that what the bridge heard changes (see `upsert_mqtt_device`)."""
    values: dict = {} if available == "offline" else {"last_seen": now}
    if available is not None:
        values["labels"] = json.dumps({**device.reported_labels, "available": available})
    if health is not None:
        values["health"] = json.dumps(health)
    if stream_id and stream_id not in device.streams:
        values["streams"] = json.dumps([*device.streams, stream_id])
    return values
