"""Rollouts: list them, see their waves, pause/resume/abort with confirmation.

Written against the contract (ListRollouts, Pause/Resume/AbortRollout); a controller that
answers UNIMPLEMENTED gets a notice instead of a table.
"""
from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Static

from ..errors import ControllerError, Unimplemented
from ..format import DASH, ROLLOUT_STYLE, when
from ..state import Changes
from ..views import RolloutView
from ..widgets.bars import ConnectionBanner
from .base import LiveScreen
from .modals import ConfirmScreen

REFRESH_S = 5.0
"""ListRollouts again this often while the screen is shown (rollout events also update it)."""

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


class RolloutsScreen(LiveScreen):
    HELP_TITLE = "rollouts"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "pause", "Pause"),
        Binding("u", "resume", "Resume"),
        Binding("a", "abort", "Abort"),
        Binding("g", "reload", "Reload", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.error: ControllerError | None = None
        self.loaded = False

    def compose(self) -> ComposeResult:
        yield ConnectionBanner()
        yield Static(Text("Rollouts", style="bold"), id="rollouts-title")
        yield Static(id="rollouts-notice")
        yield DataTable(id="rollouts", cursor_type="row", zebra_stripes=True)
        yield Static(id="rollout-detail")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#rollouts", DataTable)
        for key, label, width in (("id", "Rollout", 12), ("state", "State", 9), ("artifact", "Artifact", 8),
                                  ("wave", "Wave", 13), ("done", "Done", 8), ("created", "Created", 12)):
            table.add_column(label, width=width, key=key)
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
            notice.update(Text("No rollouts yet. Start one with `edgefleet rollout create --artifact … --canary 1`."))
        else:
            notice.update("")
        notice.display = bool(self.error is not None or not self.loaded or not self.fleet.state.rollouts)
        table.display = not isinstance(self.error, Unimplemented)
        selected = self.selected()
        table.clear()
        rollouts = sorted(self.fleet.state.rollouts.values(), key=lambda r: (r.created or 0, r.rollout_id),
                          reverse=True)
        for rollout in rollouts:
            done = sum(w.succeeded for w in rollout.waves)
            target = sum(w.target for w in rollout.waves) or rollout.devices
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
        self._show_detail()

    def _show_detail(self) -> None:
        detail = self.query_one("#rollout-detail", Static)
        rollout = self.fleet.state.rollouts.get(self.selected() or "")
        if rollout is None:
            detail.update("")
            return
        waves = "  ".join(f"wave {w.index + 1}: {w.succeeded}/{w.target} ok, {w.failed} failed ({w.state})"
                          for w in rollout.waves) or "no waves"
        reason = f"\n{rollout.reason}" if rollout.reason else ""
        detail.update(Text(f"{rollout.rollout_id} · artifact {rollout.artifact_sha256[:16] or DASH} · "
                           f"{rollout.devices} devices\n{waves}{reason}"))

    def selected(self) -> str | None:
        table = self.query_one("#rollouts", DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    # ---- actions ----

    def _confirm(self, verb: str, method: str, allowed: tuple[str, ...], danger: bool = False) -> None:
        if isinstance(self.error, Unimplemented):
            self.notify("Rollouts are not implemented by this controller yet.", severity="warning")
            return
        rollout = self.fleet.state.rollouts.get(self.selected() or "")
        if rollout is None:
            self.notify("No rollout selected.", severity="warning")
            return
        if rollout.state not in allowed:
            self.notify(f"Rollout {rollout.rollout_id} is {rollout.state}: cannot {verb.lower()} it.",
                        severity="warning", markup=False)
            return
        body = f"{verb} rollout {rollout.rollout_id} ({rollout.state}, {wave_text(rollout)})?"
        if method == "abort_rollout":
            body += "\n\nDevices that already switched roll back to their previous engine."
        rollout_id = rollout.rollout_id
        self.app.push_screen(ConfirmScreen(f"{verb} rollout", body, verb, danger), lambda yes: yes and self.fleet.act(
            f"{verb} sent for rollout {rollout_id}",
            lambda client: getattr(client, method)(rollout_id, f"{verb.lower()} from the TUI")))

    def action_pause(self) -> None:
        self._confirm("Pause", "pause_rollout", ("pending", "running"))

    def action_resume(self) -> None:
        self._confirm("Resume", "resume_rollout", ("paused",))

    def action_abort(self) -> None:
        self._confirm("Abort", "abort_rollout", ("pending", "running", "paused"), danger=True)
