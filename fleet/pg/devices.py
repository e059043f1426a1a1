"""Devices, secrets, sessions, labels, desired configuration, revocation and the audit table (PostgreSQL):
`FleetStore`'s own methods and those of its mixins ConfigTables, DecommissionTables and AuditTables.

The same methods, results and errors as the SQLite store; what they write comes from the same pure
functions of `fleet.store`, `fleet.twin_store` and `fleet.audit_store`. Several replicas may run them
at once: enrolling the same hardware id twice makes one device (the unique hardware id decides,
`on conflict`), and a read-modify-write of a device (its operator labels, its desired configuration)
holds the device's row (`for update`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .. import auth
from ..audit_store import AUDIT_COLUMNS, DEFAULT_LIMIT, AuditRecord, audit_record_from_row, audit_values
from ..decommission_store import PURGED_TABLES
from ..errors import InvalidArgument, NotFound, Unauthenticated
from ..history_store import HistoryTables
from ..selectors import Requirement, Selector
from ..store import (
    DeviceRecord,
    SecretMethods,
    SecretRecord,
    bridge_may_update,
    device_from_row,
    enrollment_values,
    heartbeat_values,
    hello_values,
    mqtt_changes,
    mqtt_device_row,
    new_device_id,
    new_device_row,
    operator_labels_after,
    secret_from_row,
)
from ..twin_store import DEVICE_COLUMNS, DEVICE_FROM, config_view, next_desired_version
from .base import PgTables

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger(__name__)

_HEALTH_COLUMNS = ("device_id", "time", "resolution_s", *HistoryTables._HEALTH_MEANS, *HistoryTables._HEALTH_MAXIMA)
HEALTH_INSERT = (f"insert into health_samples ({', '.join(_HEALTH_COLUMNS)})"
                 f" values ({', '.join(['%s'] * len(_HEALTH_COLUMNS))})")
"""`HistoryTables._HEALTH_INSERT` with PostgreSQL's placeholders: one raw health sample."""

BY_DEVICE_ID = 'order by device_id collate "C"'
"""Devices in SQLite's order (bytewise), whatever the database's collation."""

MERGED_LABELS = ("(coalesce(nullif(devices.labels, ''), '{}')::jsonb"
                 " || coalesce(nullif(devices.operator_labels, ''), '{}')::jsonb)")
"""`DeviceRecord.labels` in SQL: the device's own labels overlaid by the operator's."""


def insert_sql(table: str, columns: Iterable[str]) -> str:
    """`insert into table (columns) values (%s, ...)`."""
    names = list(columns)
    return f"insert into {table} ({', '.join(names)}) values ({', '.join(['%s'] * len(names))})"


def requirement_sql(requirement: Requirement) -> tuple[str, list] | None:
    """A selector requirement as a condition on MERGED_LABELS and its parameters; None for an operator
    this does not know (left to `Requirement.matches`)."""
    if requirement.op == "exists":
        return f"{MERGED_LABELS} ? %s", [requirement.key]
    if requirement.op == "!exists":
        return f"not {MERGED_LABELS} ? %s", [requirement.key]
    if requirement.op in ("=", "in"):  # an absent label is null: not equal to any value
        return f"({MERGED_LABELS} ->> %s) = any(%s)", [requirement.key, sorted(requirement.values)]
    if requirement.op in ("!=", "notin"):  # absent, or set to none of the values
        return f"coalesce(({MERGED_LABELS} ->> %s) <> all(%s), true)", [requirement.key, sorted(requirement.values)]
    return None


def selector_sql(selector: Selector) -> tuple[str, list, Selector]:
    """The selector as a `where` clause ("" for none) with its parameters, and what is left to match in Python."""
    conditions: list[str] = []
    params: list = []
    rest: list[Requirement] = []
    for requirement in selector.requirements:
        translated = requirement_sql(requirement)
        if translated is None:
            rest.append(requirement)
            continue
        conditions.append(translated[0])
        params.extend(translated[1])
    return ("where " + " and ".join(conditions) if conditions else ""), params, Selector(tuple(rest))


class PgDeviceTables(SecretMethods, PgTables):
    """Methods `PgStore` gains: the devices, enroll_keys, operator_tokens, desired_configs and audit tables."""

    # ---- secrets: enrollment keys and operator tokens ----

    def _create_secret(self, table: str, prefix: str, name: str, secret: str | None = None, **columns) -> str:
        """Store the secret's hash; a secret stored before is named, dated and valid again (an upsert)."""
        secret = secret or auth.new_secret(prefix)
        row = {"key_hash": auth.hash_secret(secret), "name": name, "created": time.time(), "revoked": 0, **columns}
        updates = ", ".join(f"{column} = excluded.{column}" for column in row if column != "key_hash")
        self._execute(f"{insert_sql(table, row)} on conflict (key_hash) do update set {updates}", list(row.values()))
        return secret

    def _revoke_secret(self, table: str, what: str, secret_or_id: str) -> SecretRecord:
        """Revoke by the id `list` shows, or by the secret itself."""
        rows = self._rows(f"update {table} set revoked = 1 where substr(key_hash, 1, 12) = %s or key_hash = %s"
                          " returning *", [secret_or_id, auth.hash_secret(secret_or_id)])
        if not rows:
            raise NotFound(f"no {what} with id {secret_or_id!r}")
        (row,) = rows
        return secret_from_row(row)

    def _list_secrets(self, table: str) -> list[SecretRecord]:
        return [secret_from_row(row) for row in self._rows(f"select * from {table} order by created")]

    def principal_for_token(self, token: str) -> auth.Principal | None:
        """The device or operator a bearer token belongs to; None when unknown or revoked."""
        token_hash = auth.hash_secret(token)
        rows = self._rows("select device_id from devices where token_hash = %s and revoked is null", [token_hash])
        if rows:
            return auth.Principal(auth.Role.DEVICE, rows[0]["device_id"])
        rows = self._rows("select key_hash, name, role from operator_tokens where key_hash = %s and revoked = 0",
                          [token_hash])
        if rows:
            row = rows[0]
            return auth.Principal(auth.Role.OPERATOR, auth.secret_id(row["key_hash"]), row["name"] or "",
                                  auth.Access.parse(row["role"]))
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
        also after RevokeDevice. One statement: when two replicas enroll the same box at once, the
        unique hardware id makes the second an update of the first's row (its token wins)."""
        if not hardware_id:
            raise InvalidArgument("hardware_id is empty")
        keys = self._rows("select name from enroll_keys where key_hash = %s and revoked = 0",
                          [auth.hash_secret(enroll_key)])
        if not keys:
            raise Unauthenticated("unknown or revoked enrollment key")
        token = auth.new_secret(auth.DEVICE_TOKEN_PREFIX)
        values = enrollment_values(token, hostname, agent_version, profile, labels)
        row = new_device_row(new_device_id(hostname), hardware_id, time.time(), values)
        updates = ", ".join(f"{column} = excluded.{column}" for column in values)
        with self._tx() as conn:
            (enrolled,) = self._rows(f"{insert_sql('devices', row)} on conflict (hardware_id) do update set {updates}"
                                     " returning device_id", list(row.values()), conn)
            device = self._require(enrolled["device_id"], conn)
        logger.info("enrolled %s (%s) with key %r", device.device_id, hostname, keys[0]["name"])
        return device, token

    # ---- sessions ----

    def record_hello(
        self, device_id: str, agent_version: str, profile: dict, plan: dict, streams: list[str],
        labels: dict[str, str] | None = None,
    ) -> DeviceRecord:
        """`labels`: the device's own labels as its Hello reports them; they replace the stored ones
        (None leaves them)."""
        return self._update_device(device_id, hello_values(agent_version, profile, plan, streams, labels, time.time()))

    def set_operator_labels(self, device_id: str, set_labels: dict[str, str], remove: list[str]) -> DeviceRecord:
        """Set and remove the operator's labels of a device (`fleet.store.operator_labels_after`), the
        device's row held meanwhile, so that two operators' changes both count."""
        with self._tx() as conn:
            self._lock([device_id], conn)
            labels = operator_labels_after(self._require(device_id, conn), set_labels, remove)
            return self._update_device(device_id, {"operator_labels": json.dumps(labels)}, conn)

    def devices_matching(self, selector: Selector) -> list[DeviceRecord]:
        """The devices whose labels (the device's own overlaid by the operator's) the selector matches, by
        device id. Every operator of `fleet.selectors` is matched in SQL (`requirement_sql`); one it would
        not know is matched in Python on what SQL selected."""
        where, params, rest = selector_sql(selector)
        return [device for device in self._devices(where, params) if rest.matches(device.labels)]

    def record_heartbeat(
        self, device_id: str, health: dict, plan: dict | None, *, now: float | None = None
    ) -> DeviceRecord:
        """Keep the device's latest health (and plan), and append the health to its history as one
        raw sample (resolution 0) stamped with the controller's clock, in the same transaction."""
        now = time.time() if now is None else now
        with self._tx() as conn:
            device = self._update_device(device_id, heartbeat_values(health, plan, now), conn)
            conn.execute(HEALTH_INSERT, [device_id, now, 0, *HistoryTables._health_values(health)])
        return device

    def set_plan_override(self, device_id: str, override: dict) -> DeviceRecord:
        """Store the operator's SetPlan for the device (as a dict); an empty dict removes it."""
        return self._update_device(device_id, {"plan_override": json.dumps(override)})

    def upsert_mqtt_device(self, device_id: str, *, available: str | None = None, health: dict | None = None,
                           stream_id: str | None = None) -> DeviceRecord | None:
        """A device that speaks MQTT only, as `fleet.mqtt_bridge` hears it (see `FleetStore.upsert_mqtt_device`):
        created on first sight, then kept current; None for a device enrolled over gRPC or revoked, and
        for one removed while this ran (the bridge's next message makes it again)."""
        now = time.time()
        new = mqtt_device_row(device_id, now)
        with self._tx() as conn:
            created = self._execute(f"{insert_sql('devices', new)} on conflict (device_id) do nothing",
                                    list(new.values()), conn) == 1
            rows = self._rows("select hardware_id, revoked from devices where device_id = %s for update",
                              [device_id], conn)
            if not rows or not bridge_may_update(rows[0]["hardware_id"], rows[0]["revoked"]):
                return None
            values = mqtt_changes(self._require(device_id, conn), now, available, health, stream_id)
            device = self._update_device(device_id, values, conn) if values else self._require(device_id, conn)
        if created:
            logger.info("MQTT-only device %s joined the fleet", device_id)
        return device

    # ---- desired configuration (fleet.twin_store's ConfigTables) ----

    def set_desired_configs(self, device_ids: list[str], document: str, set_from: str) -> list[DeviceRecord]:
        """Store `document` as each device's next version (`next_desired_version`), in one transaction
        that holds the devices' rows, so that two documents set at once get two versions."""
        now = time.time()
        with self._tx() as conn:
            self._lock(device_ids, conn)
            for device_id in device_ids:
                version = next_desired_version(config_view(self._require(device_id, conn)))
                conn.execute(
                    "insert into desired_configs (device_id, version, document, set_from, updated)"
                    " values (%s, %s, %s, %s, %s) on conflict (device_id) do update set version = excluded.version,"
                    " document = excluded.document, set_from = excluded.set_from, updated = excluded.updated",
                    [device_id, version, document, set_from, now])
            return [self._require(device_id, conn) for device_id in device_ids]

    def record_config_status(self, device_id: str, status: dict) -> DeviceRecord:
        """Keep the device's last ConfigStatus (`status_dict`)."""
        return self._update_device(device_id, {"config_status": json.dumps(status)})

    # ---- revocation and removal (fleet.decommission_store's DecommissionTables) ----

    def revoke_device(self, device_id: str) -> DeviceRecord:
        """Mark the device revoked now (a device revoked before keeps its first time); its token is refused
        from now on. NotFound for an unknown device."""
        with self._tx() as conn:
            self._execute("update devices set revoked = %s where device_id = %s and revoked is null",
                          [time.time(), device_id], conn)
            return self._require(device_id, conn)

    def remove_device(self, device_id: str, purge_data: bool) -> int:
        """Delete the device (its desired configuration and plan override with it); with `purge_data`
        also its detections, health history and events. Returns how many detections were deleted."""
        with self._tx() as conn:
            if not self._execute("delete from devices where device_id = %s", [device_id], conn):
                raise NotFound(f"device {device_id!r} is not enrolled")
            self._execute("delete from desired_configs where device_id = %s", [device_id], conn)
            if not purge_data:
                return 0
            counts = [self._execute(f"delete from {table} where device_id = %s", [device_id], conn)
                      for table in PURGED_TABLES]
            return counts[0]

    # ---- audit (fleet.audit_store's AuditTables) ----

    def add_audit(self, record: AuditRecord) -> int:
        (row,) = self._rows(f"{insert_sql('audit', AUDIT_COLUMNS)} returning id", audit_values(record))
        return int(row["id"])

    def list_audit(self, since: float = 0.0, limit: int = DEFAULT_LIMIT) -> list[AuditRecord]:
        """The newest `limit` entries at or after `since`, oldest first (the order a log reads in); a
        negative limit, none (as SQLite reads it)."""
        rows = self._rows("select * from (select * from audit where time >= %s order by id desc limit %s) as newest"
                          " order by id", [since, limit if limit >= 0 else None])
        return [audit_record_from_row(row) for row in rows]

    # ---- reads ----

    def list_devices(self) -> list[DeviceRecord]:
        return self._devices()

    def get_device(self, device_id: str) -> DeviceRecord:
        return self._require(device_id)

    def last_seen_by_device(self) -> dict[str, float | None]:
        """Every device's last-seen time; what the presence sweep reads each second."""
        return {row["device_id"]: row["last_seen"] for row in self._rows("select device_id, last_seen from devices")}

    def _require(self, device_id: str, conn: psycopg.Connection | None = None) -> DeviceRecord:
        found = self._devices("where device_id = %s", [device_id], conn)
        if not found:
            raise NotFound(f"device {device_id!r} is not enrolled")
        return found[0]

    def _devices(self, where: str = "", params: list | None = None,
                 conn: psycopg.Connection | None = None) -> list[DeviceRecord]:
        """Devices with their desired configuration, by device id."""
        rows = self._rows(f"select {DEVICE_COLUMNS} from {DEVICE_FROM} {where} {BY_DEVICE_ID}", params or [], conn)
        return [device_from_row(row) for row in rows]

    def _lock(self, device_ids: list[str], conn: psycopg.Connection) -> None:
        """Hold these devices' rows until `conn`'s transaction ends (those that exist; in one order, so two
        transactions locking overlapping sets wait instead of deadlocking). Read them after this, in a
        statement of its own: it sees what a transaction that held them before committed."""
        self._execute(f"select device_id from devices where device_id = any(%s) {BY_DEVICE_ID} for update",
                      [sorted(set(device_ids))], conn)

    def _update_device(self, device_id: str, values: dict, conn: psycopg.Connection | None = None) -> DeviceRecord:
        """Set these columns of the device; its record after, or NotFound."""
        sets = ", ".join(f"{column} = %s" for column in values)
        with self._tx() if conn is None else contextlib.nullcontext(conn) as tx:
            if not self._execute(f"update devices set {sets} where device_id = %s", [*values.values(), device_id],
                                 tx):
                raise NotFound(f"device {device_id!r} is not enrolled")
            return self._require(device_id, tx)

