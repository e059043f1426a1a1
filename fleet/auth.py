"""Secrets and who holds them: enrollment keys, device tokens, operator tokens and their roles.

Every secret is random and stored only as its sha256. A bearer token belongs to exactly
one principal: a device (its token came from `Enroll`) or an operator (its token came
from `edgefleet operator-token create`). The kind decides which service it may call; an
operator token's `Access` decides which FleetControl calls (`FLEET_CONTROL_ACCESS`).
The token is read from call metadata by `edgefleet.common.auth.bearer_token`.
"""
from __future__ import annotations

import enum
import hashlib
import secrets
from dataclasses import dataclass

ENROLL_KEY_PREFIX = "efk_"
DEVICE_TOKEN_PREFIX = "efd_"
OPERATOR_TOKEN_PREFIX = "efo_"


class Role(enum.Enum):
    """Which kind of principal a token belongs to: it picks the service (AgentGateway or FleetControl)."""

    DEVICE = "device"
    OPERATOR = "operator"


class Access(enum.IntEnum):
    """An operator token's role; each includes everything the ones below it may do.

    viewer reads and watches; operator also changes devices and ships models (commands, plan
    overrides, labels, configuration, artifacts, rollouts); admin also decommissions devices and
    reads the audit log (which names every token and what it did).
    """

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Access:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown role {text!r}: use one of {', '.join(a.label for a in cls)}") from None


DEFAULT_ACCESS = Access.OPERATOR
"""What `edgefleet operator-token create` gives without --role: enough to run the fleet, not to decommission it."""


@dataclass(frozen=True)
class CallAccess:
    """Who may make one FleetControl call, and whether it changes anything (then it is audited)."""

    minimum: Access
    mutating: bool = False


_READ = CallAccess(Access.VIEWER)
_CHANGE = CallAccess(Access.OPERATOR, mutating=True)
_DECOMMISSION = CallAccess(Access.ADMIN, mutating=True)

FLEET_CONTROL_ACCESS: dict[str, CallAccess] = {
    "ListDevices": _READ,
    "GetDevice": _READ,
    "WatchFleet": _READ,
    "GetDeviceConfig": _READ,
    "ListDetections": _READ,
    "WatchDetections": _READ,
    "ListObjects": _READ,
    "CountObjects": _READ,
    "GetSnapshot": _READ,
    "GetFrame": _READ,  # asks the device for a picture, changes nothing
    "ListArtifacts": _READ,
    "GetRollout": _READ,
    "ListRollouts": _READ,
    "SetPlanOverride": _CHANGE,
    "SendCommand": _CHANGE,
    "SetDeviceLabels": _CHANGE,
    "SetDesiredConfig": _CHANGE,
    "UploadArtifact": _CHANGE,
    "CreateRollout": _CHANGE,
    "PauseRollout": _CHANGE,
    "ResumeRollout": _CHANGE,
    "AbortRollout": _CHANGE,
    "RevokeDevice": _DECOMMISSION,
    "RemoveDevice": _DECOMMISSION,
    "ListAudit": CallAccess(Access.ADMIN),
}
"""Every FleetControl method by name. A method missing here is refused to every token (the
interceptor closes what nobody decided), and tests/integration/test_roles.py fails for it."""


@dataclass(frozen=True)
class Principal:
    """The holder of a valid token: a device (subject = device id) or an operator (subject = token id).

    An operator's `name` and `access` come from its token's row; a device has neither."""

    role: Role
    subject: str
    name: str = ""
    access: Access | None = None


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(24)


def hash_secret(secret: str) -> str:
    """sha256 of a high-entropy secret; no salt is needed because the secrets are random."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_id(secret_hash: str) -> str:
    """A short public name for a stored secret, for listing and revoking it without the secret."""
    return secret_hash[:12]
