"""What the table mixins of `FleetStore` share: its connection and its transaction helper."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import sqlite_utils

if TYPE_CHECKING:
    from .object_rows import GroupWrites
    from .store import DeviceRecord

T = TypeVar("T")


class StoreTables:
    """Base of `FleetStore` and its mixins (`DetectionTables`, `HistoryTables`, `RolloutTables`).

    `db` is the store's sqlite_utils.Database (autocommit connection, one thread).
    """

    db: sqlite_utils.Database

    def _transaction(self, work: Callable[[], T]) -> T:
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
            conn.execute("commit")
        except BaseException:
            if conn.in_transaction:  # a failed commit leaves it open too
                conn.execute("rollback")
            raise
        return result

    def _write_objects(self, writes: GroupWrites, now: float) -> None:
        """Objects, counts and pictures of a group commit; `ObjectTables` writes them."""
        raise NotImplementedError

    def _require(self, device_id: str) -> DeviceRecord:
        """The enrolled device, or NotFound; `FleetStore` reads it."""
        raise NotImplementedError
