"""The controller's exceptions. The gRPC interceptor maps each to one status code."""
from __future__ import annotations


class FleetError(Exception):
    """Base class of every error the controller raises on purpose."""


class InvalidArgument(FleetError):
    """The request is malformed; the message names the field and the value."""


class NotFound(FleetError):
    """The named device, artifact or rollout does not exist."""


class Unauthenticated(FleetError):
    """No credentials, or credentials the controller does not know."""


class PermissionDenied(FleetError):
    """Valid credentials that may not do this."""


class FailedPrecondition(FleetError):
    """The request is valid but the state does not allow it now."""


class OutOfRange(FleetError):
    """A position past the end (an artifact offset beyond its size)."""


class ConfigError(FleetError):
    """A setting that cannot work (a missing certificate, thresholds out of order); names the setting."""


class Unavailable(FleetError):
    """The fleet database cannot be reached now (PostgreSQL restarting, every connection busy): retry."""
