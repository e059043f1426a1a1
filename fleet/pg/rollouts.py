"""Artifacts (their bytes too), rollouts and events (PostgreSQL).

The methods of the SQLite store's mixin of the same name, with the same results and errors."""
from __future__ import annotations

from .base import PgTables


class PgRolloutTables(PgTables):
    """Methods `PgStore` gains."""
