"""The create-rollout dialog: pick an uploaded artifact, say where and how fast, CreateRollout.

Fields are checked as the controller would (`tui.rollout_form`) and a wrong one is named
under the form. The controller's own refusal (FAILED_PRECONDITION "no device matches …")
comes as a notification and under the form too; the dialog stays open to fix it. It
dismisses with the created `RolloutView`, or None when cancelled.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, Static

from ..errors import ControllerError, Unimplemented
from ..format import DASH, size_text
from ..rollout_form import FormError, parse_rollout_form
from ..views import ArtifactView, EventEntry, RolloutRequest, RolloutView

if TYPE_CHECKING:
    from ..app import FleetApp

FORM = (
    # input id, label, initial value, placeholder
    ("selector", "Selector", "", "KEY=VALUE … (empty: every device)"),
    ("canary", "Canary devices", "1", "devices in the first wave"),
    ("waves", "Waves %", "100", "cumulative, e.g. 10,50,100"),
    ("gate_fps_ratio", "Gate fps ratio", "0.9", "new engine's fps ≥ ratio × old"),
    ("max_failures", "Max failures", "0", "failed devices tolerated after the canary"),
)


class CreateRolloutScreen(ModalScreen[RolloutView | None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel", show=False)]

    def __init__(self) -> None:
        super().__init__()
        self.artifacts: list[ArtifactView] = []
        self.loaded = False
        self.sending = False

    @property
    def fleet(self) -> FleetApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="-wide"):
            yield Static(Text("New rollout"), id="dialog-title")
            yield Static("Loading artifacts…", id="artifacts-notice")
            yield DataTable(id="artifacts", cursor_type="row", zebra_stripes=True)
            for key, label, value, placeholder in FORM:
                with Horizontal(classes="form-row"):
                    yield Label(label, classes="form-label")
                    yield Input(value, placeholder=placeholder, id=key, compact=True)
            yield Static(id="form-error")
            with Horizontal(id="dialog-buttons"):
                yield Button("Cancel (Esc)", id="cancel", compact=True)
                yield Button("Create (Enter)", id="create", compact=True, variant="primary")

    def on_mount(self) -> None:
        table = self.query_one("#artifacts", DataTable)
        for key, label, width in (("name", "Artifact", 22), ("format", "Format", 15), ("size", "Size", 8),
                                  ("sha", "SHA-256", 12)):
            table.add_column(label, width=width, key=key)
        table.focus()
        self.run_worker(self._load, thread=True, group="artifacts", exit_on_error=False)

    def _load(self) -> None:
        try:
            artifacts = self.fleet.client.list_artifacts()
        except ControllerError as err:
            self.app.call_from_thread(self._loaded, [], err)
        else:
            self.app.call_from_thread(self._loaded, artifacts, None)

    def _loaded(self, artifacts: list[ArtifactView], error: ControllerError | None) -> None:
        self.loaded = True
        self.artifacts = sorted(artifacts, key=lambda a: (-(a.created or 0), a.name, a.sha256))
        notice = self.query_one("#artifacts-notice", Static)
        if isinstance(error, Unimplemented):
            notice.update(Text("This controller does not implement artifacts (ListArtifacts: UNIMPLEMENTED).",
                               style="bold yellow"))
        elif error is not None:
            notice.update(Text(f"Cannot list artifacts: {error}", style="bold red"))
        elif not self.artifacts:
            notice.update(Text("No artifacts yet: upload one with `edgefleet artifact push MODEL`.",
                               style="yellow"))
        else:
            notice.update(Text("Artifact (↑/↓, Enter), then the fields (Tab):", style="dim"))
        table = self.query_one("#artifacts", DataTable)
        table.clear()
        for artifact in self.artifacts:
            table.add_row(Text(artifact.name or DASH), Text(artifact.format or DASH),
                          Text(size_text(artifact.size_bytes), justify="right"), Text(artifact.sha256[:12]),
                          key=artifact.sha256)
        table.display = bool(self.artifacts)

    # ---- the form ----

    def chosen(self) -> str | None:
        table = self.query_one("#artifacts", DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def request(self) -> RolloutRequest:
        """The request the dialog describes now; raises `FormError`."""
        values = {key: self.query_one(f"#{key}", Input).value for key, *_ in FORM}
        return parse_rollout_form(self.chosen(), **values)

    def show_error(self, message: str, field: str | None = None) -> None:
        self.query_one("#form-error", Static).update(Text(message, style="bold red"))
        for key, *_ in FORM:
            self.query_one(f"#{key}", Input).set_class(key == field, "-invalid")
        if field == "artifact":
            self.query_one("#artifacts", DataTable).focus()
        elif field is not None:
            self.query_one(f"#{field}", Input).focus()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        artifact = next((a for a in self.artifacts if a.sha256 == event.row_key.value), None)
        title = Text("New rollout")
        if artifact is not None:
            title.append(f" of {artifact.name or DASH} ({artifact.format}, {artifact.sha256[:12]})", style="not bold")
        self.query_one("#dialog-title", Static).update(title)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.query_one("#selector", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_create()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "create":
            self.action_create()
        else:
            self.action_cancel()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def action_create(self) -> None:
        if self.sending:
            return
        try:
            request = self.request()
        except FormError as err:
            self.show_error(str(err), err.field)
            return
        self.show_error("")
        self.query_one("#form-error", Static).update(Text("Creating…", style="dim"))
        self.sending = True
        self.run_worker(lambda: self._send(request), thread=True, group="create", exit_on_error=False)

    def _send(self, request: RolloutRequest) -> None:
        try:
            rollout = self.fleet.client.create_rollout(request)
        except ControllerError as err:
            self.app.call_from_thread(self._refused, err)
            return
        done = (f"Rollout {rollout.rollout_id} created: {rollout.targets} device(s) in {len(rollout.waves)} "
                f"wave(s)")
        self.fleet.coalescer.put(rollout)
        self.fleet.coalescer.put(EventEntry(self.fleet.clock(), "operator", done))
        self.app.call_from_thread(self._sent, rollout, done)

    def _refused(self, err: ControllerError) -> None:
        self.sending = False
        self.notify(str(err), title="Rollout not created", severity="error", timeout=8, markup=False)
        self.show_error(err.details or str(err))

    def _sent(self, rollout: RolloutView, done: str) -> None:
        self.sending = False
        self.notify(done, markup=False)
        self.dismiss(rollout)
