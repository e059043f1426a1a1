"""Pictures in the terminal: a JPEG drawn with half blocks, or with the terminal's own graphics.

The half-block drawing works in every terminal that shows colour, and in Textual's SVG snapshots:
each cell is "▀" with the upper pixel as its foreground colour and the lower one as its background,
so a cell is two square-ish pixels. Terminals that speak a graphics protocol (Kitty's, Sixel) show
the real picture through `textual-image` instead; which one a terminal speaks is asked once, before
the app takes the terminal (`detect_graphics`), and EDGEFLEET_TUI_PICTURES=halfblock turns it off.
"""
from __future__ import annotations

import logging
import os
from functools import lru_cache

import cv2
import numpy as np
from rich.style import Style
from rich.text import Text

logger = logging.getLogger(__name__)

UPPER_HALF = "▀"
ENV_PICTURES = "EDGEFLEET_TUI_PICTURES"

_graphics: type | None = None


class PictureError(ValueError):
    """Bytes that do not decode as a picture."""


def decode(jpeg: bytes) -> np.ndarray:
    """The picture as RGB rows (h, w, 3) uint8."""
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) if jpeg else None
    if image is None:
        raise PictureError(f"not a picture ({len(jpeg)} bytes)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def fit(width: int, height: int, cells_wide: int, cells_high: int) -> tuple[int, int]:
    """The largest (cells wide, cell rows) a width x height picture fills within the box, aspect kept (a
    cell row is two pixels of a cell's width)."""
    cells_wide, cells_high = max(1, cells_wide), max(1, cells_high)
    scale = min(cells_wide / width, 2 * cells_high / height)
    return max(1, round(width * scale)), max(1, round(height * scale / 2))


def halfblock(rgb: np.ndarray, cells_wide: int, cells_high: int) -> Text:
    """`rgb` downscaled to fit cells_wide x cells_high cells, as rows of "▀" cells."""
    height, width = rgb.shape[:2]
    columns, rows = fit(width, height, cells_wide, cells_high)
    small = cv2.resize(rgb, (columns, 2 * rows), interpolation=cv2.INTER_AREA)
    text = Text(no_wrap=True, overflow="crop")
    for row in range(rows):
        if row:
            text.append("\n")
        for top, bottom in zip(small[2 * row].tolist(), small[2 * row + 1].tolist()):
            text.append(UPPER_HALF, _style(tuple(top), tuple(bottom)))
    return text


@lru_cache(maxsize=4096)
def _style(top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Style:
    return Style(color="#{:02x}{:02x}{:02x}".format(*top), bgcolor="#{:02x}{:02x}{:02x}".format(*bottom))


def detect_graphics() -> None:
    """Ask the terminal, once and before Textual starts, whether it shows pictures itself (Kitty's
    graphics protocol, Sixel): then `graphics_widget()` is textual-image's widget for it."""
    global _graphics
    if os.environ.get(ENV_PICTURES, "auto") == "halfblock":
        return
    try:
        from textual_image import renderable, widget
    except Exception as err:  # noqa: BLE001 - an unusual terminal must not stop the TUI: half blocks work
        logger.info("textual-image unavailable (%s): pictures in half blocks", err)
        return
    if renderable.Image in (renderable.TGPImage, renderable.SixelImage):
        _graphics = widget.Image
        logger.info("pictures through the terminal's graphics (%s)", renderable.Image.__module__)


def graphics_widget() -> type | None:
    """textual-image's widget class when the terminal shows pictures itself; None: draw half blocks."""
    return _graphics
