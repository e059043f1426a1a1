"""The twin's tables in FleetStore: desired_configs (the operator's document per device) and
devices.config_status (the device's last ConfigStatus); fleet.twin delivers and waits."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import NotFound
from .tables import StoreTables

if TYPE_CHECKING:
    from .store import DeviceRecord

DEVICE_COLUMNS = ("devices.*, desired_configs.version as desired_version, desired_configs.document as desired_document,"
                  " desired_configs.set_from as desired_from")
DEVICE_FROM = "devices left join desired_configs using (device_id)"
"""How the store reads a device with its desired configuration (DeviceRecord.config)."""


def config_of_row(row: dict) -> dict:
    """DeviceRecord.config from a row read with DEVICE_COLUMNS: the reported status and the desired columns."""
    config = json.loads(row.get("config_status") or "{}")
    for name in ("desired_version", "desired_document", "desired_from"):
        if row.get(name) is not None:
            config[name] = row[name]
    return config


@dataclass(frozen=True)
class DeviceConfigView:
    """Desired vs reported for one device (edgefleet.v1.DeviceConfig)."""

    device_id: str
    desired_version: int = 0
    desired_document: str = ""
    desired_from: str = ""
    applied_version: int = 0
    applied_document: str = ""
    refused_version: int = 0
    errors: tuple[str, ...] = ()
    how: str = ""

    @property
    def in_sync(self) -> bool:
        return self.applied_version == self.desired_version

    @property
    def pending(self) -> bool:
        """A desired version the device has neither applied nor refused: it goes down on the next Session."""
        return self.desired_version > 0 and self.desired_version not in (self.applied_version, self.refused_version)


def config_view(device: DeviceRecord) -> DeviceConfigView:
    """The device's twin from its record (`config`: desired columns and the reported status, joined by the store)."""
    config = device.config
    return DeviceConfigView(
        device.device_id, int(config.get("desired_version") or 0), config.get("desired_document") or "",
        config.get("desired_from") or "", int(config.get("applied_version") or 0),
        config.get("applied_document") or "", int(config.get("refused_version") or 0),
        tuple(config.get("errors") or ()), config.get("how") or "")


def status_dict(applied_version: int, refused_version: int, errors: list[str], applied_document: str,
                how: str) -> dict:
    """A ConfigStatus as stored in devices.config_status (JSON, numbers as numbers)."""
    return {"applied_version": applied_version, "refused_version": refused_version, "errors": list(errors),
            "applied_document": applied_document, "how": how}


def next_desired_version(view: DeviceConfigView) -> int:
    """The version a new desired document gets: above every version the device was sent or reported, so
    versions only go up, also past what it reports from an earlier controller."""
    return max(view.desired_version, view.applied_version, view.refused_version) + 1


class ConfigTables(StoreTables):
    """FleetStore's desired_configs table and devices.config_status."""

    def set_desired_configs(self, device_ids: list[str], document: str, set_from: str) -> list[DeviceRecord]:
        """Store `document` as each device's next version, in one transaction."""
        conn, now = self.db.conn, time.time()

        def write() -> None:
            for device_id in device_ids:
                version = next_desired_version(config_view(self._require(device_id)))
                conn.execute(
                    'insert into desired_configs (device_id, version, document, set_from, updated)'
                    ' values (?, ?, ?, ?, ?) on conflict (device_id) do update set version = excluded.version,'
                    ' document = excluded.document, set_from = excluded.set_from, updated = excluded.updated',
                    [device_id, version, document, set_from, now])

        self._transaction(write)
        return [self._require(device_id) for device_id in device_ids]

    def record_config_status(self, device_id: str, status: dict) -> DeviceRecord:
        """Keep the device's last ConfigStatus (`status_dict`)."""
        if not self.db.conn.execute("update devices set config_status = ? where device_id = ?",
                                    [json.dumps(status), device_id]).rowcount:
            raise NotFound(f"device {device_id!r} is not enrolled")
        return self._require(device_id)
