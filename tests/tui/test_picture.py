"""Half blocks: a picture fits its box with its aspect kept, each cell's colours are its two pixels."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgefleet.tui.picture import UPPER_HALF, PictureError, decode, fit, halfblock


@pytest.mark.parametrize("size, box, cells", [
    ((640, 480), (40, 40), (40, 15)),   # width-bound: 40 wide, 30 pixel rows = 15 cell rows
    ((640, 480), (80, 10), (27, 10)),   # height-bound
    ((100, 400), (40, 10), (5, 10)),    # a tall crop
    ((10, 10), (1, 1), (1, 1)),
])
def test_fit(size, box, cells):
    assert fit(*size, *box) == cells


def test_each_cell_is_the_upper_pixel_over_the_lower_one():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0::2] = (255, 0, 0)    # even rows red
    rgb[1::2] = (0, 0, 255)    # odd rows blue
    rgb[:, 2:] = (0, 255, 0)   # the right half green
    text = halfblock(rgb, 4, 2)
    assert text.plain == "\n".join([UPPER_HALF * 4] * 2)
    styles = [span.style for span in text.spans]
    first, right = styles[0], styles[2]
    assert (first.color.triplet.hex, first.bgcolor.triplet.hex) == ("#ff0000", "#0000ff")
    assert (right.color.triplet.hex, right.bgcolor.triplet.hex) == ("#00ff00", "#00ff00")


def test_a_jpeg_decodes_to_rgb_and_garbage_is_refused():
    bgr = np.zeros((8, 8, 3), np.uint8)
    bgr[:] = (0, 0, 255)  # red in OpenCV's BGR
    rgb = decode(cv2.imencode(".jpg", bgr)[1].tobytes())
    assert rgb.shape == (8, 8, 3) and rgb[4, 4, 0] > 200 and rgb[4, 4, 2] < 50
    with pytest.raises(PictureError, match="not a picture"):
        decode(b"not a jpeg")
