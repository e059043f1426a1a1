"""What an UNAVAILABLE from gRPC means when dialing the controller, in words an operator can act on.

gRPC reports every failed connection as UNAVAILABLE with its transport's text, and for a TLS
mismatch that text is often just "Socket closed". What the client can tell apart (see docs/tls.md):

| client | controller | gRPC says |
| --- | --- | --- |
| TLS | plaintext | `WRONG_VERSION_NUMBER` |
| TLS, other CA | TLS | `CERTIFICATE_VERIFY_FAILED` or `BAD_SIGNATURE` |
| TLS | TLS, other host name | `Hostname Verification Check failed` |
| TLS | TLS, an Ed25519 certificate | `Handshake read failed (Socket closed)` |
| plaintext | TLS | `Socket closed` |
| TLS, no or a foreign client certificate | mutual TLS | `Socket closed` |
| either | nothing listening | `Connection refused` |
"""
from __future__ import annotations

from .tls import ClientTLS


def explain_unavailable(address: str, details: str, tls: ClientTLS | None) -> str:
    """The reason a call to `address` could not connect, or `details` itself when it says nothing known."""
    host = address.rsplit(":", 1)[0]
    if "Connection refused" in details:
        return f"nothing listens at {address} (connection refused): is the controller running there?"
    if tls is not None:
        ca = f"the CA in {tls.ca}" if tls.ca else "the system's CAs"
        if "WRONG_VERSION_NUMBER" in details:
            return (f"TLS handshake with {host} failed: the controller does not speak TLS (it serves plaintext); "
                    "drop --tls-ca/--tls-cert/--tls-key, or serve with --tls-cert and --tls-key")
        if "CERTIFICATE_VERIFY_FAILED" in details or "BAD_SIGNATURE" in details:
            return (f"TLS handshake with {host} failed: the controller's certificate is not signed by {ca}; "
                    "pass the CA that signed it as --tls-ca")
        if "not in peer certificate" in details or "Hostname Verification Check failed" in details:
            return (f"TLS handshake with {host} failed: the controller's certificate does not name {host}; "
                    "dial a name it lists (its subjectAltName) or reissue it with this one")
        if "Handshake read failed" in details:
            return (f"TLS handshake with {host} failed: the controller's certificate may have an Ed25519 key, "
                    "which gRPC cannot use; reissue it with an EC P-256 or RSA key (docs/tls.md)")
        if "Socket closed" in details:
            client = f"the client certificate {tls.cert}" if tls.cert else "no client certificate"
            return (f"the controller at {address} closed the connection during the TLS handshake: it may require "
                    f"mutual TLS and refuse {client}; pass --tls-cert/--tls-key signed by the CA it trusts "
                    "(its --tls-client-ca)")
        return details
    if "Socket closed" in details:
        return (f"the controller at {address} closed the connection: it may serve TLS; pass --tls-ca with the CA "
                "that signed its certificate")
    return details
