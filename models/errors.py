"""Exceptions of the model pipeline."""
from __future__ import annotations


class ModelError(Exception):
    """Base class: anything wrong with a model file, its conversion or its backend."""


class ModelNotFound(ModelError):
    """A model file or the package that ships it is missing."""


class ChecksumMismatch(ModelError):
    """A file's sha256 differs from the one it must have."""


class UnsupportedModel(ModelError):
    """A layer, option or layout this converter or backend does not handle."""


class BackendUnavailable(ModelError):
    """A configured backend whose SDK or hardware is not on this machine."""
