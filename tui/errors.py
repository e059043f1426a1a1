"""The TUI's exceptions: what went wrong talking to the controller, in words an operator can act on."""
from __future__ import annotations


class TuiError(Exception):
    """Base class of the errors the TUI raises on purpose."""


class ControllerError(TuiError):
    """A FleetControl call failed. `code` is the gRPC status name ("NOT_FOUND", ...)."""

    def __init__(self, method: str, code: str, details: str):
        super().__init__(f"{method}: {code}: {details}" if details else f"{method}: {code}")
        self.method = method
        self.code = code
        self.details = details


class Unavailable(ControllerError):
    """The controller cannot be reached (down, restarting, network) or did not answer in time."""


class Unimplemented(ControllerError):
    """This controller does not implement the call yet (e.g. rollouts)."""


class Refused(ControllerError):
    """The controller refused the operator token (UNAUTHENTICATED or PERMISSION_DENIED)."""
