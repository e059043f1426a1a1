"""Secrets and who holds them: enrollment keys, device tokens, operator tokens.

Every secret is random and stored only as its sha256. A bearer token belongs to exactly
one principal: a device (its token came from `Enroll`) or an operator (its token came
from `edgefleet operator-token create`). The role decides which service it may call.
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
    DEVICE = "device"
    OPERATOR = "operator"


@dataclass(frozen=True)
class Principal:
    """The holder of a valid token: a device (subject = device id) or an operator (subject = token id)."""

    role: Role
    subject: str


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(24)


def hash_secret(secret: str) -> str:
    """sha256 of a high-entropy secret; no salt is needed because the secrets are random."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_id(secret_hash: str) -> str:
    """A short public name for a stored secret, for listing and revoking it without the secret."""
    return secret_hash[:12]

