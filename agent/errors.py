"""The agent's exceptions. The CLI turns each into one line and an exit code."""
from __future__ import annotations


class AgentError(Exception):
    exit_code = 1


class ConfigError(AgentError):
    """Bad flags or config; the message names the field and the value."""
    exit_code = 2


class SourceError(AgentError):
    """A source that cannot be opened or read."""
    exit_code = 2


class EnrollmentError(AgentError):
    """The controller refused the enrollment key or the device token."""
    exit_code = 3


class ControllerUnreachable(AgentError):
    """The controller could not be reached before the deadline; the outbox keeps the data."""
    exit_code = 4


class RestartRequested(AgentError):
    """The controller asked for a restart and the agent exits for its service manager to start it again
    (`--restart-mode exit`, or auto under systemd); the shipped unit restarts on this code."""
    exit_code = 75


class EngineError(AgentError):
    """A deployment step that failed; the message is the reason the device reports."""


class SignatureError(EngineError):
    """An artifact manifest whose signature the controller's key does not verify (or no key)."""


class DownloadError(EngineError):
    """A download that cannot complete: refused, retries exhausted, or bytes that do not match."""


class FetchError(EngineError):
    """Raised by a fetch function; `retryable=False` for answers a retry cannot change (NOT_FOUND)."""

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


class GateFailed(EngineError):
    """The shadow test's verdict was a fail; carries its metrics for the report."""

    def __init__(self, message: str, metrics: dict[str, float]):
        super().__init__(message)
        self.metrics = metrics
