"""The bearer token in gRPC call metadata: read by the controller's interceptor and the agent's InferenceService."""
from __future__ import annotations


def bearer_token(metadata) -> str | None:
    """The token from `authorization: Bearer <token>` call metadata, if any."""
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip()
    return None
