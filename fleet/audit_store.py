"""The audit table (schema step 4): a `FleetStore` mixin. What goes in it is decided by `fleet.audit`."""
from __future__ import annotations

from dataclasses import dataclass

from .tables import StoreTables

DEFAULT_LIMIT = 100
AUDIT_COLUMNS = ("time", "token_id", "token_name", "role", "call", "target", "parameters", "ok", "error")
"""The columns `add_audit` writes, in `audit_values` order."""


@dataclass(frozen=True)
class AuditRecord:
    time: float
    token_id: str
    token_name: str
    role: str
    call: str
    target: str
    parameters: str
    ok: bool
    error: str = ""
    id: int = 0


class AuditTables(StoreTables):
    """Methods `FleetStore` gains: the `audit` table (schema step 4)."""

    def add_audit(self, record: AuditRecord) -> int:
        cursor = self.db.execute(
            f"insert into audit ({', '.join(AUDIT_COLUMNS)}) values ({', '.join('?' * len(AUDIT_COLUMNS))})",
            audit_values(record),
        )
        return int(cursor.lastrowid or 0)

    def list_audit(self, since: float = 0.0, limit: int = DEFAULT_LIMIT) -> list[AuditRecord]:
        """The newest `limit` entries at or after `since`, oldest first (the order a log reads in)."""
        cursor = self.db.execute(
            "select * from (select * from audit where time >= ? order by id desc limit ?) order by id",
            [since, limit],
        )
        columns = [c[0] for c in cursor.description]
        return [audit_record_from_row(dict(zip(columns, row))) for row in cursor.fetchall()]


def audit_record_from_row(row: dict) -> AuditRecord:
    return AuditRecord(row["time"], row["token_id"] or "", row["token_name"] or "", row["role"] or "",
                       row["call"], row["target"] or "", row["parameters"] or "{}", bool(row["ok"]),
                       row["error"] or "", row["id"])


def audit_values(record: AuditRecord) -> list:
    """The record as the values of AUDIT_COLUMNS."""
    return [record.time, record.token_id, record.token_name, record.role, record.call, record.target,
            record.parameters, int(record.ok), record.error]
