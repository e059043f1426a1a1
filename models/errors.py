"""Exceptions of the model pipeline: one base class, so callers can catch `ModelError` once."""
from __future__ import annotations


class ModelError(Exception):
    """Base class: anything wrong with a model file, its conversion, its config or its backend."""


class ModelNotFound(ModelError):
    """A model file, or the package that ships it, is missing."""


class ChecksumMismatch(ModelError):
    """A file's sha256 differs from the one it must have."""


class UnsupportedModel(ModelError):
    """A layer, option or layout this converter or backend does not handle."""


class WeightsMismatch(ModelError):
    """A weights file whose size does not fit its cfg (truncated, or bytes left over)."""


class InvalidConfig(ModelError):
    """A detector config that fails validation (unknown backend, bad field or value)."""


class BackendUnavailable(ModelError):
    """A configured backend whose SDK, execution provider or hardware is not on this machine."""


class ManifestError(ModelError):
    """A manifest that is missing, unreadable, or fails validation (names the field and the value)."""


class ArtifactMismatch(ChecksumMismatch):
    """An artifact whose size or sha256 differs from its manifest (truncated, tampered, replaced)."""


class IncompatibleArtifact(ModelError):
    """An artifact this device cannot run (another TensorRT version or GPU, no runtime for it)."""
