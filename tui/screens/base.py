"""What every live screen shares: the connection banner and redrawing from the app's state."""
from __future__ import annotations

from typing import TYPE_CHECKING

from textual.screen import Screen

from ..state import Changes
from ..widgets.bars import ConnectionBanner

if TYPE_CHECKING:
    from ..app import FleetApp


class LiveScreen(Screen):
    """A screen drawn from `FleetApp.state`. The app calls `sync` after each coalesced apply
    while the screen is visible; a screen that comes back into view redraws in full.

    Subclasses call `ready()` at the end of their `on_mount` (tables have their columns then);
    until that, `sync` is not called.
    """

    is_ready = False

    def ready(self) -> None:
        self.is_ready = True
        self.sync(None, self.fleet.clock(), tick=True)

    @property
    def fleet(self) -> FleetApp:
        return self.app  # type: ignore[return-value]

    def on_screen_resume(self) -> None:
        if self.is_ready:
            self.sync(None, self.fleet.clock(), tick=True)

    def sync(self, changes: Changes | None, now: float, tick: bool = False) -> None:
        """Redraw what `changes` touched (None: everything); `tick` once a second for clocks."""
        if changes is None or changes.connection or tick:
            for banner in self.query(ConnectionBanner):
                banner.show(self.fleet.state.connection, now)
