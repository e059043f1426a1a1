"""TLS credentials from PEM files, for the controller's port and for the clients that dial it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from .errors import ConfigError


def _read(path: Path, setting: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(f"{setting} {path}: {err.strerror}") from err


@dataclass(frozen=True)
class ServerTLS:
    """The controller's certificate and key; with `client_ca`, mutual TLS.

    Under mutual TLS the handshake fails for a client without a certificate signed by
    `client_ca`. A certificate proves the connection, not the role: calls still need a
    device or operator token.
    """

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        client_ca = _read(self.client_ca, "--tls-client-ca") if self.client_ca else None
        return grpc.ssl_server_credentials(
            [(_read(self.key, "--tls-key"), _read(self.cert, "--tls-cert"))],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )


@dataclass(frozen=True)
class ClientTLS:
    """What a client trusts (`ca`; None: the system's roots) and, for mutual TLS, its own cert and key."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ConfigError("--tls-cert and --tls-key go together")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "--tls-ca") if self.ca else None,
            private_key=_read(self.key, "--tls-key") if self.key else None,
            certificate_chain=_read(self.cert, "--tls-cert") if self.cert else None,
        )
