"""`python -m edgefleet.tui`: the fleet TUI without going through the `edgefleet` CLI."""
import sys

from .cli import main

sys.exit(main())
