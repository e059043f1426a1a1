"""Revoking and removing devices in the store: a `FleetStore` mixin.

A revoked device keeps its row and its data; `devices.revoked` holds when its token was revoked,
and `principal_for_token` refuses a token whose device is revoked. Enrolling the same hardware again
with a valid key clears it (`FleetStore.enroll`). Removing a device deletes its row; with
`purge_data`, also its detections, health history and events.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .errors import NotFound
from .tables import StoreTables

if TYPE_CHECKING:
    from .store import DeviceRecord

PURGED_TABLES = ("detections", "health_samples", "events", "objects", "object_counts", "object_snapshots")
"""A device's data that `remove_device(purge_data=True)` deletes, detections first (their count is returned)."""


class DecommissionTables(StoreTables):
    def revoke_device(self, device_id: str) -> DeviceRecord:
        """Mark the device revoked now (a device revoked before keeps its first time); its token is refused
        from now on. NotFound for an unknown device."""
        self._require(device_id)
        self.db.conn.execute("update devices set revoked = ? where device_id = ? and revoked is null",
                             [time.time(), device_id])
        return self._require(device_id)

    def remove_device(self, device_id: str, purge_data: bool) -> int:
        """Delete the device (its desired configuration and plan override with it); with `purge_data`
        also its detections, health history and events. Returns how many detections were deleted."""
        conn = self.db.conn

        def work() -> int:
            if not conn.execute("delete from devices where device_id = ?", [device_id]).rowcount:
                raise NotFound(f"device {device_id!r} is not enrolled")
            conn.execute("delete from desired_configs where device_id = ?", [device_id])
            if not purge_data:
                return 0
            counts = [conn.execute(f"delete from {table} where device_id = ?", [device_id]).rowcount
                      for table in PURGED_TABLES]
            return counts[0]

        return self._transaction(work)
