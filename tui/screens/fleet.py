"""The fleet screen: every device in one live table, with counts, sort and filter."""
from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Footer, Input

from ..state import Changes
from ..widgets.bars import ConnectionBanner, FleetCounts
from ..widgets.fleet_table import COLUMN_KEYS, FleetTable
from .base import FilterScreen


class FleetScreen(FilterScreen):
    HELP_TITLE = "fleet"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_device", "Device"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("s", "sort_next", "Sort"),
        Binding("S", "sort_reverse", "Reverse sort", show=False),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield ConnectionBanner()
        yield FleetCounts(id="counts")
        yield FleetTable(id="fleet")
        yield Input(placeholder="filter: name, platform, status, or labels site=lab,!legacy (Enter keeps, Esc clears)",
                    id="filter", compact=True)
        yield Footer()

    @property
    def table(self) -> FleetTable:
        return self.query_one(FleetTable)

    def on_mount(self) -> None:
        self.table.focus()
        self.ready()

    def sync(self, changes: Changes | None, now: float, tick: bool = False) -> None:
        super().sync(changes, now, tick)
        state = self.fleet.state
        table = self.table
        if changes is None or changes.full or changes.devices or changes.removed or tick:
            table.sync(state, changes, now, tick)
        self._show_counts()

    def _show_counts(self) -> None:
        table = self.table
        state = self.fleet.state
        extra = []
        if table.filter:
            extra.append(f"filter “{table.filter}”: {table.shown} shown")
        if state.connection.state != "connected" and state.devices:
            extra.append("last known")
        self.query_one(FleetCounts).show(state.counts(), " · ".join(extra))

    # ---- open ----

    def on_fleet_table_selected(self, event: FleetTable.Selected) -> None:
        event.stop()
        self.fleet.open_device(event.device_id)

    def action_open_device(self) -> None:
        device_id = self.table.current_device()
        if device_id:
            self.fleet.open_device(device_id)

    # ---- sort ----

    def action_sort_next(self) -> None:
        table = self.table
        following = COLUMN_KEYS[(COLUMN_KEYS.index(table.sort_column) + 1) % len(COLUMN_KEYS)]
        self._sort(following)

    def action_sort_reverse(self) -> None:
        self._sort(self.table.sort_column, not self.table.reverse)

    def on_fleet_table_sort_requested(self, event: FleetTable.SortRequested) -> None:
        event.stop()
        self._sort(event.column)

    def _sort(self, column: str, reverse: bool | None = None) -> None:
        self.table.set_sort(column, reverse)
        self.table.sync(self.fleet.state, None, self.fleet.clock())
        self._show_counts()

    # ---- filter ----

    def filter_target(self):
        return self.table

    def apply_filter(self, text: str) -> None:
        self.table.filter = text.strip()
        self.table.sync(self.fleet.state, None, self.fleet.clock())
        self._show_counts()
