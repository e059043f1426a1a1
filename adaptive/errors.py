"""Exceptions of the adaptive layer: one base class, so callers can catch `AdaptiveError` once.

The probe never raises (a file it cannot read is "unknown"); planning and the controller do,
on input they cannot work with.
"""
from __future__ import annotations


class AdaptiveError(Exception):
    """Base class: anything the adaptive layer cannot decide from what it was given."""


class PlanError(AdaptiveError):
    """No plan can be made: no usable artifact, or every candidate failed to load or run."""


class LadderError(AdaptiveError):
    """A controller ladder or config that cannot work (empty, or a field out of range)."""
