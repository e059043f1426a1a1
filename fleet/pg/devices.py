"""Devices, secrets, sessions, labels, desired configuration, revocation and the audit table (PostgreSQL).

The methods of the SQLite store's mixin of the same name, with the same results and errors."""
from __future__ import annotations

from .base import PgTables


class PgDeviceTables(PgTables):
    """Methods `PgStore` gains."""
