"""`PgStore`: the controller's fleet state in PostgreSQL, shared by every controller replica.

The same methods, arguments, results and errors as `fleet.store.FleetStore` (the SQLite file);
tests/contract runs one suite against both. Unlike FleetStore, every method may be called from
several threads at once (the controller's store pool is as wide as the connection pool).
"""
from __future__ import annotations

import logging

from .base import migrate, open_pool, redact
from .detections import PgDetectionTables
from .devices import PgDeviceTables
from .history import PgHistoryTables
from .objects import PgObjectTables
from .rollouts import PgRolloutTables

logger = logging.getLogger(__name__)

DEFAULT_POOL_SIZE = 8


class PgStore(PgDeviceTables, PgDetectionTables, PgObjectTables, PgHistoryTables, PgRolloutTables):
    """`url`: postgresql://user:password@host:port/dbname (libpq's other parameters too)."""

    threadsafe = True
    """Store calls may run on several threads at once (FleetStore's: one thread)."""

    def __init__(self, url: str, *, pool_size: int = DEFAULT_POOL_SIZE):
        self.url = url
        self.where = redact(url)
        self.pool_size = pool_size
        self.pool = open_pool(url, min_size=min(2, pool_size), max_size=pool_size)
        try:
            migrate(self.pool, self.where)
            self.maintain_partitions()
        except BaseException:
            self.pool.close()
            raise

    def close(self) -> None:
        self.pool.close()
