"""Enrollment keys and device tokens: random secrets, stored only as hashes."""
from __future__ import annotations

import hashlib
import hmac
import secrets

ENROLL_KEY_PREFIX = "efk_"
DEVICE_TOKEN_PREFIX = "efd_"


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(24)


def hash_secret(secret: str) -> str:
    """sha256 of a high-entropy secret; no salt is needed because the secrets are random."""
    return hashlib.sha256(secret.encode()).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a, b)


def bearer_token(metadata) -> str | None:
    """The token from `authorization: Bearer <token>` call metadata, if any."""
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip()
    return None
