"""Modal dialogs: confirm an action, and the keyboard help."""
from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Static

from ..format import STATUS_STYLE


class ConfirmScreen(ModalScreen[bool]):
    """Asks once; dismisses with True only for the confirm button (or `y`)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes", show=False),
        Binding("n,escape", "answer(False)", "No", show=False),
    ]

    def __init__(self, title: str, body: str, confirm: str = "Confirm", danger: bool = False):
        super().__init__()
        self.title_text = title
        self.body = body
        self.confirm_label = confirm
        self.danger = danger

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(Text(self.title_text), id="dialog-title")
            yield Static(Text(self.body), id="dialog-body")
            with Horizontal(id="dialog-buttons"):
                yield Button("Cancel (n)", id="cancel", compact=True)
                yield Button(f"{self.confirm_label} (y)", id="confirm", compact=True,
                             variant="error" if self.danger else "primary")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "confirm")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


def if_confirmed(action: Callable[[], object]) -> Callable[[bool | None], None]:
    """The `push_screen` callback for a ConfirmScreen: runs `action` on a yes, nothing otherwise."""
    def answered(yes: bool | None) -> None:
        if yes:
            action()

    return answered


class HelpScreen(ModalScreen[None]):
    """The keys of the screen underneath and of the app, and what the colours mean."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,question_mark,q", "dismiss_help", "Close", show=False)]

    def __init__(self, screen: Screen, app_bindings: list[BindingType]):
        super().__init__()
        self.for_screen = screen
        self.app_bindings = app_bindings

    def compose(self) -> ComposeResult:
        keys = Table.grid(padding=(0, 2))
        keys.add_column(style="bold", no_wrap=True)
        keys.add_column()
        for binding in _bindings([*getattr(type(self.for_screen), "BINDINGS", []), *self.app_bindings]):
            if binding.description:
                keys.add_row(binding.key_display or _display(binding.key), binding.description)
        colours = Text.assemble(*[part for status, style in STATUS_STYLE.items()
                                  for part in (("● ", style), f"{status}  ")])
        with Vertical(id="dialog"):
            yield Static(f"Keys — {getattr(self.for_screen, 'HELP_TITLE', 'edgefleet')}", id="dialog-title")
            with VerticalScroll(id="help-keys"):
                yield Static(keys)
            yield Static(Text.assemble(colours, "by heartbeat age"))
            yield Static("Esc or ? closes this.", classes="dim")

    def action_dismiss_help(self) -> None:
        self.dismiss(None)


def _bindings(items: list[BindingType]) -> list[Binding]:
    return [item if isinstance(item, Binding) else Binding(*item) for item in items]


_NAMES = {"slash": "/", "question_mark": "?", "enter": "Enter", "escape": "Esc"}


def _display(keys: str) -> str:
    return ", ".join(_NAMES.get(k, k) for k in keys.split(","))
