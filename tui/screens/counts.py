"""Today's counts across the fleet: zone entries and line crossings since local midnight, by the devices'
`site` label (devices without one under "-"), each zone or line, label and direction; refreshed every few
seconds with one CountObjects call."""
from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Static

from ..errors import ControllerError, Unimplemented
from ..format import clock_time
from ..live import local_midnight
from ..state import Changes
from ..views import CountsView
from ..widgets.bars import ConnectionBanner
from .base import LiveScreen

SITE_LABEL = "site"
REFRESH_S = 5.0
COLUMNS = (("Site", 12), ("Kind", 5), ("Zone / line", 16), ("Label", 10), ("Direction", 9), ("Count", 8))


class CountsScreen(LiveScreen):
    HELP_TITLE = "counts"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("r", "refresh", "Refresh")]

    def __init__(self) -> None:
        super().__init__()
        self.counts: CountsView | None = None
        self.error = ""
        self.asked_at: float | None = None

    def compose(self) -> ComposeResult:
        yield ConnectionBanner()
        yield Static(id="counts-title")
        yield DataTable(id="fleet-counts", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#fleet-counts", DataTable)
        for label, width in COLUMNS:
            table.add_column(label, width=width, key=label.lower())
        self.set_interval(REFRESH_S, self.action_refresh)
        self.action_refresh()
        self.ready()

    def action_refresh(self) -> None:
        client, since = self.fleet.client, local_midnight(self.fleet.clock())

        def work() -> None:
            try:
                counts = client.count_objects(since, group_by=(f"label:{SITE_LABEL}",))
            except Unimplemented:
                self.app.call_from_thread(self._failed, "this controller does not count objects (UNIMPLEMENTED)")
            except ControllerError as err:
                self.app.call_from_thread(self._failed, err.details or err.code)
            else:
                self.app.call_from_thread(self._arrived, counts)

        self.run_worker(work, thread=True, group="counts", exclusive=True, exit_on_error=False)

    def _arrived(self, counts: CountsView) -> None:
        self.counts, self.error, self.asked_at = counts, "", self.fleet.clock()
        self._show()

    def _failed(self, why: str) -> None:
        self.error = why
        self._show()

    def sync(self, changes: Changes | None, now: float, tick: bool = False) -> None:
        super().sync(changes, now, tick)

    def _show(self) -> None:
        counts = self.counts
        title = Text.assemble(("Counts today", "bold"), f" since {clock_time(local_midnight(self.fleet.clock()))}"
                              f" by {SITE_LABEL}")
        if counts is not None:
            title.append(f" · total {counts.total}", style="bold")
            title.append(f" · as of {clock_time(self.asked_at)}", style="dim")
        if self.error:
            title.append(f"  [{self.error}]", style="red")
        self.query_one("#counts-title", Static).update(title)
        if counts is None:
            return
        table = self.query_one("#fleet-counts", DataTable)
        table.clear()
        for b in counts.buckets:
            site = Text(b.group or "-", style="" if b.group else "dim")
            table.add_row(site, Text(b.kind), Text(b.name, style="cyan"), Text(b.label), Text(b.direction),
                          Text(str(b.count), justify="right"))
        if not counts.buckets:
            table.add_row(Text("nothing counted today", style="dim"), *[Text("")] * (len(COLUMNS) - 1))
