"""The device's identity with its controller (`<state_dir>/identity.json`), written once enrolled."""
from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass
class Identity:
    device_id: str
    token: str
    controller: str
    controller_public_key: bytes = b""
    """Raw 32-byte Ed25519 key that verifies artifact manifests (EnrollResponse.controller_public_key);
    b"" in identities saved by older agents, which therefore refuse deployments until re-enrolled."""

    def to_json(self) -> dict:
        return {"device_id": self.device_id, "token": self.token, "controller": self.controller,
                "controller_public_key": base64.b64encode(self.controller_public_key).decode()}


def load_identity(path: Path, controller: str) -> Identity | None:
    """The identity saved at `path` for `controller` (None: none, unreadable, or another controller's)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("controller") != controller:
        return None
    try:
        key = base64.b64decode(data.get("controller_public_key") or "", validate=True)
    except ValueError:
        logger.error("%s: controller_public_key is not base64; deployments need a re-enrollment", path)
        key = b""
    return Identity(data["device_id"], data["token"], data["controller"], key)


def save_identity(path: Path, identity: Identity) -> None:
    """Write it readable by this user only, atomically."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(identity.to_json()))
    tmp.chmod(0o600)
    tmp.replace(path)
