"""common.annotate: what is drawn lands on the right pixels, crops and downscales have the sizes asked
for, and JPEGs decode and hold their byte cap."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgefleet.common.annotate import (
    LINE_COLOUR,
    ZONE_COLOUR,
    Box,
    LineShape,
    ZoneShape,
    colour_of,
    crop,
    downscale,
    draw,
    encode_jpeg,
    render,
)


def grey(width: int = 640, height: int = 480) -> np.ndarray:
    return np.full((height, width, 3), 60, np.uint8)


def noise(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Random pixels: the worst case for JPEG, so byte caps are really tested."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(int) - b.astype(int)).sum(axis=2) > 30


def decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a decodable JPEG"
    return image


# ---- draw ----

def test_a_box_is_outlined_in_its_labels_colour_its_inside_left_alone_and_the_input_untouched():
    image = grey()
    before = image.copy()
    out = draw(image, [Box((100, 200, 300, 400), "person", 0.87, 12)])
    assert np.array_equal(image, before), "draw works on a copy"
    assert tuple(out[300, 100]) == colour_of("person"), "left edge"
    assert tuple(out[400, 200]) == colour_of("person"), "bottom edge"
    assert not changed(out[220:390, 110:290], image[220:390, 110:290]).any(), "inside untouched"
    band = changed(out[170:200, 100:300], image[170:200, 100:300])
    assert band.sum() > 500, "caption band above the box"
    assert not changed(out[:150], image[:150]).any() and not changed(out[:, 320:], image[:, 320:]).any()


def test_a_box_at_the_top_keeps_its_caption_inside_the_frame():
    image = grey()
    out = draw(image, [(np.array([10.0, 0.0, 200.0, 100.0]), "car", 0.5, 0)])  # a plain tuple, numpy coordinates
    assert changed(out[2:15, 20:60], image[2:15, 20:60]).sum() > 50


def test_zones_and_lines_are_drawn_in_their_colours_under_the_boxes():
    image = grey()
    zone = ZoneShape("door", [(50, 50), (250, 50), (250, 250), (50, 250)], 3)
    line = LineShape("gate", np.array([[300.0, 400.0], [600.0, 400.0]]), "in 4 out 1")
    out = draw(image, [Box((240, 100, 280, 200), "person", 0.9)], [zone], [line])
    assert tuple(out[150, 50]) == ZONE_COLOUR and tuple(out[250, 150]) == ZONE_COLOUR
    assert tuple(out[400, 450]) == LINE_COLOUR and tuple(out[400, 590]) == LINE_COLOUR
    assert tuple(out[150, 240]) == colour_of("person"), "the box is drawn over the zone"
    assert changed(out[30:50, 50:120], image[30:50, 50:120]).sum() > 100, "the zone's caption"
    assert changed(out[380:400, 300:420], image[380:400, 300:420]).sum() > 100, "the line's caption"
    assert not changed(out[300:380, 0:250], image[300:380, 0:250]).any()


def test_longer_captions_cover_more_pixels():
    """The zone's occupancy and the line's counts are written, not only the names."""
    image = grey()
    named = draw(image, zones=[ZoneShape("z", [(100, 100), (300, 100), (300, 300)])])
    counted = draw(image, zones=[ZoneShape("z", [(100, 100), (300, 100), (300, 300)], 12)])
    assert changed(counted, image).sum() > changed(named, image).sum()


def test_scale_draws_source_pixel_coordinates_on_a_smaller_picture():
    small = grey(320, 240)
    out = draw(small, [Box((200, 200, 400, 400), "dog", 0.7)], scale=0.5)
    assert tuple(out[150, 100]) == colour_of("dog") and tuple(out[200, 150]) == colour_of("dog")


def test_render_downscales_then_draws_at_that_scale():
    image = grey(1280, 720)
    out = render(image, [Box((400, 200, 800, 600), "person", 0.8)], lines=[("l", [(0, 700), (1280, 700)], None)],
                 max_width=640)
    assert out.shape == (360, 640, 3)
    assert tuple(out[200, 200]) == colour_of("person") and tuple(out[300, 400]) == colour_of("person")
    assert tuple(out[350, 320]) == LINE_COLOUR


def test_draw_refuses_what_is_not_a_bgr_image():
    with pytest.raises(ValueError, match=r"HxWx3 uint8.*\(48, 64\)"):
        draw(np.zeros((48, 64), np.uint8))


def test_labels_keep_their_colours_and_differ():
    assert colour_of("person") == colour_of("person") != colour_of("car")


# ---- downscale and crop ----

@pytest.mark.parametrize("size, max_width, max_side, expected", [
    ((1920, 1080), 640, None, (640, 360)),
    ((1920, 1080), None, 320, (320, 180)),
    ((1080, 1920), 640, 320, (180, 320)),
    ((320, 240), 640, None, (320, 240)),  # never enlarged
    ((320, 240), None, None, (320, 240)),
])
def test_downscale_bounds(size, max_width, max_side, expected):
    out, factor = downscale(grey(*size), max_width, max_side)
    assert (out.shape[1], out.shape[0]) == expected
    assert factor == pytest.approx(expected[0] / size[0], abs=1e-3)


def test_downscale_refuses_a_bound_of_zero():
    with pytest.raises(ValueError, match="max_width 0"):
        downscale(grey(), max_width=0)


def test_crop_pads_clips_and_downscales():
    image = noise(1000, 800)
    cut = crop(image, (100, 100, 300, 500), pad=0.1, max_side=None)
    assert cut.shape == (480, 240, 3)
    assert np.array_equal(cut, image[60:540, 80:320])
    assert cut.base is None, "a copy, not a view keeping the frame alive"
    edge = crop(image, (-50, 700, 100, 900), pad=0.0, max_side=None)
    assert edge.shape == (100, 100, 3), "clipped to the frame"
    small = crop(image, (0, 0, 800, 400), pad=0.0, max_side=320)
    assert small.shape == (160, 320, 3)


def test_crop_refuses_a_box_outside_the_frame():
    with pytest.raises(ValueError, match=r"box \(700, 10, 900, 50\) lies outside the 640x480 frame"):
        crop(grey(), (700, 10, 900, 50), pad=0.0)


# ---- encode_jpeg ----

def test_a_jpeg_decodes_at_the_width_asked_for():
    image = draw(grey(1280, 720), [Box((100, 100, 400, 500), "person", 0.9, 3)])
    data = encode_jpeg(image, max_width=640)
    assert data[:2] == b"\xff\xd8"
    decoded = decode(data)
    assert decoded.shape == (360, 640, 3)
    assert np.abs(decoded.astype(int) - cv2.resize(image, (640, 360), interpolation=cv2.INTER_AREA)).mean() < 4


@pytest.mark.parametrize("max_bytes", [150_000, 80_000, 40_000])
def test_quality_is_lowered_until_the_jpeg_fits(max_bytes):
    image = noise(640, 480)
    first = encode_jpeg(image, max_bytes=10_000_000)
    assert len(first) > 150_000, "noise at quality 80 is far over every cap here"
    data = encode_jpeg(image, max_bytes=max_bytes)
    assert len(data) <= max_bytes
    assert decode(data).shape == (480, 640, 3)


def test_a_cap_no_quality_can_meet_is_refused_naming_the_size():
    with pytest.raises(ValueError, match=r"a 640x480 JPEG does not fit 2000 bytes .*quality 10"):
        encode_jpeg(noise(640, 480), max_bytes=2000)


def test_max_side_applies_before_encoding():
    assert decode(encode_jpeg(noise(400, 1200), max_side=300)).shape == (300, 100, 3)


def test_a_quality_out_of_range_is_refused():
    with pytest.raises(ValueError, match="quality 0"):
        encode_jpeg(grey(), quality=0)
