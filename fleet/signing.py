"""The controller's Ed25519 key: it signs every artifact manifest; agents verify with its public half.

The signed bytes are `ArtifactManifest.SerializeToString(deterministic=True)`. Agents learn the
32-byte raw public key when they enroll (`EnrollResponse.controller_public_key`), so a device
accepts only artifacts this controller vouched for, whatever channel the bytes came through.

The key lives in a PEM file (PKCS#8, mode 0600) created on first start; keep it with the
database backups: a controller with a new key is a controller its devices no longer trust.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgefleet.v1 import types_pb2

from .errors import ConfigError

logger = logging.getLogger(__name__)


def signed_bytes(manifest: types_pb2.ArtifactManifest) -> bytes:
    return manifest.SerializeToString(deterministic=True)


class SigningKey:
    def __init__(self, private_key: Ed25519PrivateKey):
        self._key = private_key
        self.public_bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def load_or_create(cls, path: Path | str) -> SigningKey:
        path = Path(path)
        if path.exists():
            try:
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except (OSError, ValueError) as err:
                raise ConfigError(f"signing key {path}: {err}") from err
            if not isinstance(key, Ed25519PrivateKey):
                raise ConfigError(f"signing key {path} is not an Ed25519 key")
            return cls(key)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        logger.info("created the controller's artifact signing key %s", path)
        return cls(key)

    def sign(self, manifest: types_pb2.ArtifactManifest) -> bytes:
        return self._key.sign(signed_bytes(manifest))


def verify(public_key: bytes, manifest: types_pb2.ArtifactManifest, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, signed_bytes(manifest))
    except (InvalidSignature, ValueError):
        return False
    return True
