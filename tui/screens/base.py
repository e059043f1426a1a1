"""What the live screens share: the connection banner, redrawing from the app's state, the `/` filter."""
from __future__ import annotations

from typing import TYPE_CHECKING

from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Input

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


class FilterScreen(LiveScreen):
    """A live screen with a table and its `/` filter: an `Input#filter` shown while open (class `-open`).

    Subclasses say what the text filters (`apply_filter`) and which widget gets the focus back
    (`filter_target`).
    """

    def apply_filter(self, text: str) -> None:
        raise NotImplementedError

    def filter_target(self) -> Widget:
        raise NotImplementedError

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("-open")
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        if box.has_class("-open") or box.value:
            box.value = ""
            box.remove_class("-open")
            self.apply_filter("")
        self.filter_target().focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            self.apply_filter(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            if not event.value:
                event.input.remove_class("-open")
            self.filter_target().focus()
