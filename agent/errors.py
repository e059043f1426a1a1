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
