"""Rollouts: list them, see the selected one's waves and devices, create one, pause/resume/abort.

Written against the contract (ListRollouts, CreateRollout, Pause/Resume/AbortRollout); a
controller that answers UNIMPLEMENTED gets a notice instead of a table. Rollout events from
WatchFleet keep it current; it lists them again every few seconds while shown.
"""
from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Static

from ..errors import ControllerError, Unimplemented
from ..format import DASH, DEPLOY_STYLE, ROLLOUT_STYLE, progress_bar, when
from ..state import Changes
from ..views import RolloutDeviceView, RolloutView, WaveView
from ..widgets.bars import ConnectionBanner
from .base import LiveScreen
from .create_rollout import CreateRolloutScreen
from .modals import ConfirmScreen, if_confirmed

REFRESH_S = 5.0
"""ListRollouts again this often while the screen is shown (rollout events also update it)."""

BAR_WIDTH = 30
"""Cells of a wave's progress bar."""

REASON_WIDTH = 33
"""The device table's reason column; a longer reason wraps onto a second line."""

UNIMPLEMENTED_NOTICE = (
    "This controller does not implement rollouts yet:\n"
    "ListRollouts answered UNIMPLEMENTED.\n\n"
    "Staged rollouts (canary wave, health gates, pause, resume, abort)\n"
    "show up here once it does. Until then, pin a plan per device:\n"
    "Fleet → Enter → p."
)


def wave_text(rollout: RolloutView) -> str:
    """`2/3 running` — the wave in progress (or the last one) of all waves."""
    if not rollout.waves:
        return DASH
    current = next((w for w in rollout.waves if w.state not in ("succeeded",)), rollout.waves[-1])
    return f"{current.index + 1}/{len(rollout.waves)} {current.state}"


def spec_text(rollout: RolloutView) -> str:
    """`site=lab · canary 1 · waves 10,50,100 % · gate fps ≥ 0.9× · max failures 0`."""
    spec = rollout.spec
    if spec is None:
        return ""
    selector = " ".join(f"{k}={v}" for k, v in spec.selector) or "all devices"
    waves = ",".join(map(str, spec.waves_percent)) or DASH
    return (f"{selector} · canary {spec.canary} · waves {waves} % · gate fps ≥ {spec.gate_fps_ratio:g}× · "
            f"max failures {spec.max_failures}")


def waves_table(waves: tuple[WaveView, ...]) -> Table:
    """One line per wave: name, progress bar, done/target (✗ failed), state."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(width=7, no_wrap=True)
    grid.add_column(width=BAR_WIDTH, no_wrap=True)
    grid.add_column(width=9, no_wrap=True)
    grid.add_column(no_wrap=True)
    for wave in waves:
        grid.add_row(
            Text(wave.name, style="bold" if wave.state == "running" else ""),
            progress_bar(wave.succeeded, wave.failed, wave.target, BAR_WIDTH),
            Text.assemble(f"{wave.succeeded}/{wave.target}", (f" ✗{wave.failed}" if wave.failed else "", "red")),
            Text(wave.state, style=ROLLOUT_STYLE.get(wave.state, "")),
        )
    return grid


def device_order(device: RolloutDeviceView) -> tuple:
    """By wave, then id; the skipped ones last. Rows keep their place as states change."""
    return (device.skipped, device.wave, device.device_id)


ACTION_STATES = {"pause": ("pending", "running"), "resume": ("paused",), "abort": ("pending", "running", "paused")}
"""The rollout states each action applies to; the footer shows an action only for those."""


class RolloutsScreen(LiveScreen):
    HELP_TITLE = "rollouts"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("n", "create", "New"),
        Binding("p", "pause", "Pause"),
        Binding("u", "resume", "Resume"),
        Binding("a", "abort", "Abort"),
        Binding("tab", "app.focus_next", "Devices", show=False),
        Binding("g", "reload", "Reload", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.error: ControllerError | None = None
        self.loaded = False
        self.select_next: str | None = None  # a rollout just created: selected when it shows up
        self._shown_devices: tuple[str, tuple[RolloutDeviceView, ...]] | None = None

    def compose(self) -> ComposeResult:
        yield ConnectionBanner()
        yield Static(Text("Rollouts", style="bold"), id="rollouts-title")
        yield Static(id="rollouts-notice")
        yield DataTable(id="rollouts", cursor_type="row", zebra_stripes=True)
        yield Static(id="rollout-detail")
        yield Static(id="rollout-waves")
        yield DataTable(id="rollout-devices", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#rollouts", DataTable)
        for key, label, width in (("id", "Rollout", 12), ("state", "State", 9), ("artifact", "Artifact", 8),
                                  ("wave", "Wave", 13), ("done", "Done", 8), ("created", "Created", 12)):
            table.add_column(label, width=width, key=key)
        devices = self.query_one("#rollout-devices", DataTable)
        for key, label, width in (("device", "Device", 18), ("wave", "Wave", 6), ("state", "State", 14),
                                  ("reason", "Reason", REASON_WIDTH)):
            devices.add_column(label, width=width, key=key)
        table.focus()
        self.set_interval(REFRESH_S, self._refresh_if_shown)
        self.ready()

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        self.load()

    def _refresh_if_shown(self) -> None:
        if self.is_current:
            self.load()

    def action_reload(self) -> None:
        self.load()

    @work(thread=True, exclusive=True, group="rollouts", exit_on_error=False)
    def load(self) -> None:
        try:
            rollouts = self.fleet.client.list_rollouts()
        except ControllerError as err:
            self.app.call_from_thread(self._loaded, None, err)
        else:
            self.app.call_from_thread(self._loaded, rollouts, None)

    def _loaded(self, rollouts: list[RolloutView] | None, error: ControllerError | None) -> None:
        self.loaded = True
        self.error = error
        if isinstance(error, Unimplemented):
            self.fleet.rollouts_supported = False
        elif error is None:
            self.fleet.rollouts_supported = True
            self.fleet.state.replace_rollouts(rollouts or [])
        if self.is_ready:
            self.sync(None, self.fleet.clock())

    # ---- drawing ----

    def sync(self, changes: Changes | None, now: float, tick: bool = False) -> None:
        super().sync(changes, now, tick)
        if changes is not None and not changes.rollouts:
            return
        notice = self.query_one("#rollouts-notice", Static)
        table = self.query_one("#rollouts", DataTable)
        if isinstance(self.error, Unimplemented):
            notice.update(Text(UNIMPLEMENTED_NOTICE, style="bold yellow"))
        elif self.error is not None:
            notice.update(Text(f"Cannot list rollouts: {self.error}", style="bold red"))
        elif not self.loaded:
            notice.update("Loading rollouts…")
        elif not self.fleet.state.rollouts:
            notice.update(Text("No rollouts yet. Press n to roll an uploaded artifact out "
                               "(upload one with `edgefleet artifact push MODEL`)."))
        else:
            notice.update("")
        notice.display = bool(self.error is not None or not self.loaded or not self.fleet.state.rollouts)
        table.display = not isinstance(self.error, Unimplemented)
        selected = self.select_next if self.select_next in self.fleet.state.rollouts else self.selected()
        if selected == self.select_next:
            self.select_next = None
        table.clear()
        rollouts = sorted(self.fleet.state.rollouts.values(), key=lambda r: (r.created or 0, r.rollout_id),
                          reverse=True)
        for rollout in rollouts:
            done = sum(w.succeeded for w in rollout.waves)
            target = sum(w.target for w in rollout.waves) or rollout.targets
            failed = sum(w.failed for w in rollout.waves)
            table.add_row(
                Text(rollout.rollout_id), Text(rollout.state, style=ROLLOUT_STYLE.get(rollout.state, "")),
                Text(rollout.artifact_sha256[:8] or DASH), Text(wave_text(rollout)),
                Text(f"{done}/{target}" + (f" ✗{failed}" if failed else "")), Text(when(rollout.created, now)),
                key=rollout.rollout_id,
            )
        if selected in self.fleet.state.rollouts:
            table.move_cursor(row=table.get_row_index(selected))
        self._show_detail()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "rollouts":
            self._show_detail()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "rollout-devices" and event.row_key.value in self.fleet.state.devices:
            self.fleet.open_device(event.row_key.value)

    def _show_detail(self) -> None:
        detail = self.query_one("#rollout-detail", Static)
        waves = self.query_one("#rollout-waves", Static)
        devices = self.query_one("#rollout-devices", DataTable)
        rollout = self.fleet.state.rollouts.get(self.selected() or "")
        self.refresh_bindings()  # pause, resume and abort follow the selected rollout's state
        for widget in (detail, waves, devices):
            widget.display = rollout is not None
        if rollout is None:
            self._shown_devices = None
            return
        skipped = len(rollout.devices) - rollout.targets
        lines = [
            Text.assemble((rollout.rollout_id, "bold"), " · ",
                          (rollout.state, ROLLOUT_STYLE.get(rollout.state, "")),
                          f" · artifact {rollout.artifact_sha256[:16] or DASH} · {rollout.targets} device(s)",
                          (f", {skipped} skipped" if skipped else "", "yellow")),
        ]
        if rollout.spec is not None:
            lines.append(Text(spec_text(rollout), style="dim"))
        if rollout.reason:
            lines.append(Text(rollout.reason, style="bold red" if rollout.state == "failed" else "yellow"))
        detail.update(Text("\n").join(lines))
        waves.update(waves_table(rollout.waves) if rollout.waves else Text("no waves", style="dim"))
        self._show_devices(rollout)

    def _show_devices(self, rollout: RolloutView) -> None:
        shown = (rollout.rollout_id, rollout.devices)
        if shown == self._shown_devices:
            return
        table = self.query_one("#rollout-devices", DataTable)
        keep = table.cursor_row if self._shown_devices and self._shown_devices[0] == rollout.rollout_id else 0
        self._shown_devices = shown
        table.clear()
        for device in sorted(rollout.devices, key=device_order):
            style = DEPLOY_STYLE.get(device.state, "")
            reason_style = "red" if device.state in ("failed", "rolled_back") else "dim" if device.skipped else ""
            table.add_row(
                Text(device.device_id), Text(DASH if device.skipped else str(device.wave + 1)),
                Text(device.state.replace("_", " "), style=style), Text(device.reason, style=reason_style),
                key=device.device_id, height=None if len(device.reason) > REASON_WIDTH else 1,
            )
        if table.row_count:
            table.move_cursor(row=min(keep, table.row_count - 1), animate=False)

    def selected(self) -> str | None:
        table = self.query_one("#rollouts", DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    # ---- actions ----

    def action_create(self) -> None:
        if isinstance(self.error, Unimplemented):
            self.notify("Rollouts are not implemented by this controller yet.", severity="warning")
            return
        self.app.push_screen(CreateRolloutScreen(), self._created)

    def _created(self, rollout: RolloutView | None) -> None:
        if rollout is not None:  # it reaches the state through the coalescer, like every rollout
            self.select_next = rollout.rollout_id

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Pause, resume and abort only where the selected rollout's state allows them: hidden from
        the footer (and the key does nothing) otherwise."""
        allowed = ACTION_STATES.get(action)
        if allowed is None:
            return True
        rollout = self.fleet.state.rollouts.get(self.selected() or "") if self.is_mounted else None
        return rollout is not None and rollout.state in allowed

    def _confirm(self, verb: str, method: str, danger: bool = False) -> None:
        """Ask, then call the client's `method` on the selected rollout, if its state allows `verb` (ACTION_STATES)."""
        if isinstance(self.error, Unimplemented):
            self.notify("Rollouts are not implemented by this controller yet.", severity="warning")
            return
        rollout = self.fleet.state.rollouts.get(self.selected() or "")
        if rollout is None:
            self.notify("No rollout selected.", severity="warning")
            return
        if rollout.state not in ACTION_STATES[verb.lower()]:
            self.notify(f"Rollout {rollout.rollout_id} is {rollout.state}: cannot {verb.lower()} it.",
                        severity="warning", markup=False)
            return
        body = f"{verb} rollout {rollout.rollout_id} ({rollout.state}, {wave_text(rollout)})?"
        if method == "abort_rollout":
            body += "\n\nDevices that already switched roll back to their previous engine."
        rollout_id = rollout.rollout_id
        self.app.push_screen(ConfirmScreen(f"{verb} rollout", body, verb, danger), if_confirmed(lambda: self.fleet.act(
            f"{verb} sent for rollout {rollout_id}",
            lambda client: getattr(client, method)(rollout_id, f"{verb.lower()} from the TUI"))))

    def action_pause(self) -> None:
        self._confirm("Pause", "pause_rollout")

    def action_resume(self) -> None:
        self._confirm("Resume", "resume_rollout")

    def action_abort(self) -> None:
        self._confirm("Abort", "abort_rollout", danger=True)
