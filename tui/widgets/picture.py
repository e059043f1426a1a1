"""`Picture`: a JPEG in a box, drawn to the box's size (half blocks, or the terminal's own graphics)."""
from __future__ import annotations

import logging

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import Static

from ..picture import PictureError, decode, graphics_widget, halfblock

logger = logging.getLogger(__name__)


class Picture(Vertical):
    """Shows the last picture given to `show`, fitted to its size and redrawn when that changes; `say`
    shows words instead (nothing yet, why not). The caption goes in the border's title."""

    DEFAULT_CSS = """
    Picture {
        border: round $panel-lighten-2;
        height: 1fr;
        width: 1fr;
    }
    Picture > Static {
        height: 1fr;
        width: 1fr;
    }
    """

    def __init__(self, caption: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.border_title = caption
        self.rgb: np.ndarray | None = None
        self.jpeg: bytes = b""
        self.words = Static("", classes="picture-body")
        self._graphics: Widget | None = None  # textual-image's widget, when the terminal shows pictures itself

    def compose(self) -> ComposeResult:
        yield self.words

    @property
    def text(self) -> str:
        """What the half blocks or the words show, as plain text (tests read it)."""
        content = self.words.content
        return content.plain if isinstance(content, Text) else str(content)

    def show(self, jpeg: bytes, caption: str | None = None) -> None:
        if caption is not None:
            self.border_title = caption
        if jpeg == self.jpeg and self.rgb is not None:
            return
        try:
            rgb = decode(jpeg)
        except PictureError as err:
            self.say(str(err), "red")
            return
        self.rgb, self.jpeg = rgb, jpeg
        self._draw()

    def say(self, words: str, style: str = "dim", caption: str | None = None) -> None:
        if caption is not None:
            self.border_title = caption
        self.rgb, self.jpeg = None, b""
        if self._graphics is not None:
            self._graphics.display = False
        self.words.display = True
        self.words.update(Text(words, style=style))

    def on_resize(self) -> None:
        self._draw()

    def _draw(self) -> None:
        if self.rgb is None:
            return
        kind = graphics_widget()
        if kind is not None:
            self._show_graphics(kind, self.rgb)
            return
        width, height = self.content_size
        if width <= 0 or height <= 0:
            return  # not laid out yet: on_resize draws it
        self.words.update(halfblock(self.rgb, width, height))

    def _show_graphics(self, kind: type, rgb: np.ndarray) -> None:
        from PIL import Image

        image = Image.fromarray(rgb)
        self.words.display = False
        if self._graphics is None:
            self._graphics = kind(image)
            self.mount(self._graphics)
        else:
            self._graphics.image = image  # type: ignore[attr-defined]
            self._graphics.display = True
