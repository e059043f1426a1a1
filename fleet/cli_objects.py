"""`edgefleet objects`, `counts`, `snapshot` and `frame`."""
from __future__ import annotations

import argparse


def add_object_commands(sub: argparse._SubParsersAction) -> None:
    """Register the commands on the `edgefleet` parser."""
