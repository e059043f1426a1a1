"""The fleet's event log from WatchFleet (enrolments, sessions, status flips, plan changes), filterable."""
from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Input, Static

from ..format import clock_time
from ..state import Changes
from ..views import EventEntry
from ..widgets.bars import ConnectionBanner
from .base import FilterScreen

MAX_ROWS = 1000
"""Rows the table holds; older matching events stay in the app's log but off the table."""

KIND_STYLE = {"connection": "bold magenta", "rollout": "cyan", "fleet": ""}


def event_matches(entry: EventEntry, needle: str) -> bool:
    if not needle:
        return True
    needle = needle.lower()
    return needle in entry.text.lower() or needle in entry.kind or needle in entry.device_id.lower()


def _style(entry: EventEntry) -> str:
    text = entry.text
    if " is OFFLINE" in text or text.startswith("lost ") or "disconnected" in text:
        return "red"
    if " is STALE" in text:
        return "yellow"
    if " is ONLINE" in text or text.endswith(" connected") or text.startswith("connected "):
        return "green"
    return KIND_STYLE.get(entry.kind, "")


class EventsScreen(FilterScreen):
    HELP_TITLE = "events"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        Binding("end", "follow", "Newest", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.filter = ""
        self.shown_total = 0  # FleetState.events_total when the table was last brought up to date
        self.next_key = 0

    def compose(self) -> ComposeResult:
        yield ConnectionBanner()
        yield Static(id="events-title")
        yield DataTable(id="events", cursor_type="row", zebra_stripes=True)
        yield Input(placeholder="filter events (Enter keeps it, Esc clears)", id="filter", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#events", DataTable)
        table.add_column("Time", width=8, key="time")
        table.add_column("Event", key="text")
        table.focus()
        self.ready()

    def sync(self, changes: Changes | None, now: float, tick: bool = False) -> None:
        super().sync(changes, now, tick)
        state = self.fleet.state
        new = None if changes is None else state.new_events(self.shown_total)
        if new is None:
            self._rebuild()
        elif new:
            table = self.query_one("#events", DataTable)
            following = table.cursor_row >= table.row_count - 1
            self._add([e for e in new if event_matches(e, self.filter)])
            if following:
                table.move_cursor(row=table.row_count - 1, animate=False)
        self.shown_total = state.events_total
        self._title()

    def _rebuild(self) -> None:
        table = self.query_one("#events", DataTable)
        table.clear()
        matching = [e for e in self.fleet.state.events if event_matches(e, self.filter)]
        self._add(matching[-MAX_ROWS:])
        table.move_cursor(row=table.row_count - 1, animate=False)

    def _add(self, entries: list[EventEntry]) -> None:
        table = self.query_one("#events", DataTable)
        for entry in entries:
            table.add_row(Text(clock_time(entry.time)), Text(entry.text, style=_style(entry)), key=str(self.next_key))
            self.next_key += 1
        extra = table.row_count - MAX_ROWS
        if extra > 0:
            first = self.next_key - table.row_count  # keys count up, the rows shown are the newest ones
            for key in range(first, first + extra):
                table.remove_row(str(key))

    def _title(self) -> None:
        table = self.query_one("#events", DataTable)
        state = self.fleet.state
        parts: list[str | tuple[str, str]] = [("Events ", "bold"),
                                              f"{table.row_count} shown of {len(state.events)} kept"]
        if self.filter:
            parts.append(f" · filter “{self.filter}”")
        if state.server_dropped:
            parts.append((f" · the controller dropped {state.server_dropped} for this watcher", "yellow"))
        self.query_one("#events-title", Static).update(Text.assemble(*parts))

    # ---- filter ----

    def filter_target(self):
        return self.query_one("#events", DataTable)

    def action_follow(self) -> None:
        table = self.query_one("#events", DataTable)
        table.move_cursor(row=table.row_count - 1)

    def apply_filter(self, text: str) -> None:
        self.filter = text.strip()
        self._rebuild()
        self._title()
