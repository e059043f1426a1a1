"""One-line bars: the connection banner and the fleet's counts by status."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..format import banner_text, status_style
from ..views import STATUSES, Connection


class ConnectionBanner(Static):
    """Hidden while connected; otherwise says what is wrong with the controller link and when it retries."""

    DEFAULT_CSS = """
    ConnectionBanner { display: none; height: auto; padding: 0 1; }
    ConnectionBanner.-lost { display: block; background: $error; color: $text; text-style: bold; }
    ConnectionBanner.-connecting { display: block; background: $warning; color: $text; }
    """

    def show(self, connection: Connection, now: float) -> None:
        text = banner_text(connection, now)
        self.set_class(connection.state == "lost", "-lost")
        self.set_class(connection.state == "connecting", "-connecting")
        self.update(Text(text))


class FleetCounts(Static):
    """`12 devices  ● 10 online  ● 1 stale  ● 1 offline` and whatever the screen appends."""

    DEFAULT_CSS = """
    FleetCounts { height: 1; padding: 0 1; background: $panel; }
    """

    _shown: tuple | None = None

    def show(self, counts: dict[str, int], extra: str = "") -> None:
        key = (tuple(counts.items()), extra)
        if key == self._shown:
            return
        self._shown = key
        total = sum(counts.values())
        parts: list = [(f"{total} device{'s' if total != 1 else ''}", "bold")]
        for status in STATUSES:
            parts += ["  ", ("● ", status_style(status)), f"{counts.get(status, 0)} {status}"]
        if extra:
            parts += ["  ", (extra, "dim")]
        self.update(Text.assemble(*parts, no_wrap=True, overflow="ellipsis"))
