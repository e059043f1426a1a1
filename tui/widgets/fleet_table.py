"""The fleet table: one row per device, drawn with Textual's line API from a per-row cache.

Why not `DataTable`: it re-renders every visible cell (through Rich padding and styling)
whenever any cell changes, and refreshes once per `update_cell`. With a thousand devices
heartbeating, most applies touch the visible rows anyway, and that cost ~2.5 ms a row per
frame on a busy 2-core box. Here a row is rendered once per change into a `Strip` (~0.1 ms)
and every frame after that is a cache hit; scrolling and the cursor just pick strips.

The first column (device id) stays put when scrolling sideways. Enter or a second click on
the highlighted row posts `Selected`; a click on a header cell posts `SortRequested`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ..format import DASH, engine_text, number, plan_text, status_text
from ..state import Changes, FleetState, matches, sort_key
from ..views import DeviceView

COLUMNS = (  # key, label, width: the live numbers come first so 80 columns show them
    ("device", "Device", 20),
    ("status", "Status", 15),
    ("fps", "FPS", 5),
    ("p95", "p95 ms", 6),
    ("dps", "Det/s", 5),
    ("temp", "°C", 4),
    ("outbox", "Outbox", 6),
    ("platform", "Platform", 16),
    ("plan", "Plan", 30),
    ("engine", "Engine", 20),
)
COLUMN_KEYS = tuple(key for key, _, _ in COLUMNS)
STATUS_COLUMN = COLUMN_KEYS.index("status")
PADDING = 1
TOTAL_WIDTH = sum(width + 2 * PADDING for _, _, width in COLUMNS)
FIXED_WIDTH = COLUMNS[0][2] + 2 * PADDING
DESCENDING_FIRST = {"fps", "p95", "dps", "temp", "outbox"}  # numbers: biggest first when first chosen


def _right(value: str) -> Text:
    return Text(value, justify="right")


def row_cells(device: DeviceView, state: FleetState, now: float) -> tuple[Text, ...]:
    """The cells of a device's row. Text, never markup: names and platforms come from devices."""
    health = device.health
    return (
        Text(device.device_id),
        status_text(device, now),
        _right(number(health.fps if health else None)),
        _right(number(health.latency_ms_p95 if health else None)),
        _right(number(state.detections_per_s(device.device_id))),
        _right(number(health.temperature_c if health else None, 0)),
        _right(str(health.outbox_depth) if health else DASH),
        Text(device.platform or DASH),
        Text(plan_text(device.plan)),
        Text(engine_text(device.plan)),
    )


class FleetTable(ScrollView, can_focus=True):
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "fleet-table--header", "fleet-table--even", "fleet-table--odd", "fleet-table--cursor",
    }
    DEFAULT_CSS = """
    FleetTable {
        background: $surface;
        color: $foreground;
        & > .fleet-table--header { text-style: bold; background: $panel; color: $foreground; }
        & > .fleet-table--even { background: $surface-lighten-1 50%; }
        & > .fleet-table--odd { }
        & > .fleet-table--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
        }
        &:focus > .fleet-table--cursor {
            background: $block-cursor-background;
            color: $block-cursor-foreground;
            text-style: $block-cursor-text-style;
        }
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "edge(0)", "First", show=False),
        Binding("end", "edge(1)", "Last", show=False),
        Binding("left", "scroll_sideways(-8)", "Left", show=False),
        Binding("right", "scroll_sideways(8)", "Right", show=False),
        Binding("enter", "select", "Device", show=False),
    ]

    class Selected(Message):
        """The operator chose a device (Enter, or a click on the highlighted row)."""

        def __init__(self, device_id: str):
            super().__init__()
            self.device_id = device_id

    class SortRequested(Message):
        """The operator clicked a column header."""

        def __init__(self, column: str):
            super().__init__()
            self.column = column

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filter = ""
        self.sort_column = "device"
        self.reverse = False
        self.order: list[str] = []  # device ids as shown, top to bottom
        self._index: dict[str, int] = {}
        self._cells: dict[str, tuple[Text, ...]] = {}
        self._sort_values: dict[str, tuple] = {}  # sort_key's value per device
        self._versions: dict[str, int] = {}
        self._strips: dict[tuple[str, str], tuple[int, Strip]] = {}
        self._header: tuple[tuple, Strip] | None = None
        self._cursor_id: str | None = None
        # Heartbeat ages move with the clock: a tick bumps `_epoch`, and a row's status cell is
        # recomputed when the row is next drawn, so a tick costs the visible rows, not the fleet.
        self._epoch = 0
        self._status_epoch: dict[str, int] = {}
        self._state: FleetState | None = None
        self._now = 0.0
        self.cursor_row = 0
        self.virtual_size = Size(TOTAL_WIDTH, 1)

    # ---- reading ----

    @property
    def shown(self) -> int:
        return len(self.order)

    def current_device(self) -> str | None:
        return self.order[self.cursor_row] if self.order else None

    def cell_text(self, device_id: str, column: str) -> str:
        """What the row shows (or would show, if it is scrolled out of view) in `column`."""
        if self._status_epoch[device_id] != self._epoch:
            self._refresh_status(device_id)
        return self._cells[device_id][COLUMN_KEYS.index(column)].plain

    # ---- keeping up with the state ----

    def set_sort(self, column: str, reverse: bool | None = None) -> None:
        """Sort by `column`; choosing the current column again flips the order."""
        if reverse is None:
            reverse = not self.reverse if column == self.sort_column else column in DESCENDING_FIRST
        self.sort_column, self.reverse = column, reverse
        self._header = None

    def sync(self, state: FleetState, changes: Changes | None, now: float, tick: bool = False) -> None:
        """Bring the rows in line with `state`; `changes` None (or full) rechecks every device.

        `tick` says the clock moved on: status cells (heartbeat ages) are redrawn as rows show.
        """
        self._state, self._now = state, now
        if tick:
            self._epoch += 1
        key = sort_key(self.sort_column, state)
        reorder = False
        if changes is None or changes.full:
            for device_id in [d for d in self._cells
                              if d not in state.devices or not matches(state.devices[d], self.filter)]:
                self._remove(device_id)
            for device in state.devices.values():
                if matches(device, self.filter):
                    self._put(device, state, now, key)
            reorder = True
        else:
            for device_id in changes.removed:
                reorder |= self._remove(device_id)
            for device_id in changes.devices:
                changed = state.devices.get(device_id)
                if changed is None or not matches(changed, self.filter):
                    reorder |= self._remove(device_id)
                else:
                    reorder |= self._put(changed, state, now, key)
        if reorder:
            self._reorder()
        self.refresh()

    def _put(self, device: DeviceView, state: FleetState, now: float, key: Callable[[DeviceView], tuple]) -> bool:
        """Add or update the device's row; True when the order may have changed."""
        device_id = device.device_id
        cells = row_cells(device, state, now)
        value = key(device)
        new = device_id not in self._cells
        moved = new or self._sort_values[device_id] != value
        if new or cells != self._cells[device_id]:
            self._cells[device_id] = cells
            self._versions[device_id] = self._versions.get(device_id, 0) + 1
        self._status_epoch[device_id] = self._epoch
        self._sort_values[device_id] = value
        if new:
            self.order.append(device_id)
        return moved

    def _remove(self, device_id: str) -> bool:
        if self._cells.pop(device_id, None) is None:
            return False
        self._sort_values.pop(device_id, None)
        self._versions.pop(device_id, None)
        self._status_epoch.pop(device_id, None)
        for variant in ("even", "odd", "cursor"):
            self._strips.pop((device_id, variant), None)
        self.order.remove(device_id)  # O(n), and rare
        return True

    def _reorder(self) -> None:
        values = self._sort_values
        self.order.sort(key=values.__getitem__, reverse=self.reverse)
        self._index = {device_id: i for i, device_id in enumerate(self.order)}
        self.virtual_size = Size(TOTAL_WIDTH, len(self.order) + 1)
        if self._cursor_id in self._index:
            self._move_to(self._index[self._cursor_id])
        else:
            self._move_to(min(self.cursor_row, max(0, len(self.order) - 1)))

    # ---- cursor ----

    def _move_to(self, row: int) -> None:
        row = max(0, min(row, len(self.order) - 1))
        self.cursor_row = row
        self._cursor_id = self.order[row] if self.order else None
        visible = max(1, self.size.height - 1)
        top = round(self.scroll_y)
        if row < top:
            self.scroll_to(y=row, animate=False)
        elif row >= top + visible:
            self.scroll_to(y=row - visible + 1, animate=False)
        self.refresh()

    def action_cursor(self, step: int) -> None:
        self._move_to(self.cursor_row + step)

    def action_page(self, direction: int) -> None:
        self._move_to(self.cursor_row + direction * max(1, self.size.height - 2))

    def action_edge(self, end: int) -> None:
        self._move_to(len(self.order) - 1 if end else 0)

    def action_scroll_sideways(self, cells: int) -> None:
        self.scroll_to(x=max(0, self.scroll_x + cells), animate=False)

    def action_select(self) -> None:
        device_id = self.current_device()
        if device_id is not None:
            self.post_message(self.Selected(device_id))

    def on_click(self, event: events.Click) -> None:
        if event.y == 0:
            x = event.x if event.x < FIXED_WIDTH else event.x + round(self.scroll_x)
            edge = 0
            for key, _, width in COLUMNS:
                edge += width + 2 * PADDING
                if x < edge:
                    self.post_message(self.SortRequested(key))
                    return
            return
        row = round(self.scroll_y) + event.y - 1
        if 0 <= row < len(self.order):
            if row == self.cursor_row or event.chain >= 2:
                self._move_to(row)
                self.action_select()
            else:
                self._move_to(row)

    def on_focus(self) -> None:
        self._strips.clear()  # the cursor row changes colour with focus
        self.refresh()

    def on_blur(self) -> None:
        self._strips.clear()
        self.refresh()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()
        self._header = None

    # ---- drawing ----

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        if y == 0:
            strip = self._header_strip()
        else:
            row = round(self.scroll_y) + y - 1
            if not 0 <= row < len(self.order):
                return Strip.blank(width, self.rich_style)
            strip = self._row_strip(self.order[row], "cursor" if row == self.cursor_row else
                                    ("even" if row % 2 == 0 else "odd"))
        scroll_x = round(self.scroll_x)
        if scroll_x:
            strip = Strip.join([strip.crop(0, FIXED_WIDTH),
                                strip.crop(FIXED_WIDTH + scroll_x, scroll_x + max(width, FIXED_WIDTH))])
        return strip.adjust_cell_length(width, self.rich_style)

    def _row_strip(self, device_id: str, variant: str) -> Strip:
        if self._status_epoch[device_id] != self._epoch:
            self._refresh_status(device_id)
        version = self._versions[device_id]
        cached = self._strips.get((device_id, variant))
        if cached is not None and cached[0] == version:
            return cached[1]
        style = self.get_component_rich_style(f"fleet-table--{variant}")
        strip = self._render_cells(self._cells[device_id], style)
        self._strips[(device_id, variant)] = (version, strip)
        return strip

    def _refresh_status(self, device_id: str) -> None:
        self._status_epoch[device_id] = self._epoch
        device = self._state.devices.get(device_id) if self._state is not None else None
        if device is None:
            return
        cells = self._cells[device_id]
        status = status_text(device, self._now)
        if status != cells[STATUS_COLUMN]:
            self._cells[device_id] = (*cells[:STATUS_COLUMN], status, *cells[STATUS_COLUMN + 1:])
            self._versions[device_id] += 1

    def _header_strip(self) -> Strip:
        key = (self.sort_column, self.reverse)
        if self._header is None or self._header[0] != key:
            labels = []
            for column, label, _ in COLUMNS:
                arrow = (" ▼" if self.reverse else " ▲") if column == self.sort_column else ""
                labels.append(Text(label + arrow))
            self._header = (key, self._render_cells(labels, self.get_component_rich_style("fleet-table--header")))
        return self._header[1]

    def _render_cells(self, cells, style: Style) -> Strip:
        line = Text(style=style, no_wrap=True, end="")
        pad = " " * PADDING
        for cell, (_, _, width) in zip(cells, COLUMNS):
            cell = cell.copy()
            length = cell.cell_len
            if length > width:
                cell.truncate(width, overflow="ellipsis")
            elif cell.justify == "right":
                cell.pad_left(width - length)
            else:
                cell.pad_right(width - length)
            line.append(pad)
            line.append(cell)
            line.append(pad)
        return Strip(list(line.render(self.app.console)), line.cell_len)
