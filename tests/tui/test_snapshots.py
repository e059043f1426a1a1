"""Layout at 80×24, one snapshot per screen, rendered from the fixed fleet in `fixed.py`.

Update after an intended change with `pytest tests/tui/test_snapshots.py --snapshot-update`
and look at the SVGs (the report pytest-textual-snapshot writes shows old and new side by side).
"""
from __future__ import annotations

import time

import pytest

from edgefleet.tui.app import FleetApp
from edgefleet.tui.picture import UPPER_HALF
from edgefleet.tui.widgets.picture import Picture

from .fixed import EVENTS, FRAMES, HISTORY, NOW, ROLLOUTS, FixedClient

pytest.importorskip("pytest_textual_snapshot", reason="snapshot tests need pytest-textual-snapshot (the dev extra)")


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    """Event times are shown in local time: pin it."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


FED = 4 + len(HISTORY) + len(EVENTS)
"""Items the fixed feed delivers: connecting, the snapshot, connected and its log line, then the stream."""


def fixed_app(rollouts=None) -> FleetApp:
    return FleetApp("ctl.example:50051", "efo_unused", client=FixedClient(rollouts), clock=lambda: NOW)


async def settle(pilot, ready=lambda app: True, timeout: float = 20.0) -> None:
    """Wait until the feed thread delivered everything and `ready(app)`, then apply it."""
    app = pilot.app
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await pilot.pause(0.05)
        app.apply_pending()
        if app.state.connection.state == "connected" and app.rollouts_supported is not None and ready(app):
            break
    else:
        pytest.fail("the fixed fleet did not settle")
    app.apply_pending()
    await pilot.pause()


def test_fleet_screen(snap_compare):
    async def run_before(pilot):
        await settle(pilot, lambda app: app.state.applied_items >= FED)

    assert snap_compare(fixed_app(), terminal_size=(80, 24), run_before=run_before)


def test_fleet_screen_filtered_and_sorted_by_fps(snap_compare):
    async def run_before(pilot):
        await settle(pilot, lambda app: app.state.applied_items >= FED)
        await pilot.press("slash", *"rpi")
        pilot.app.screen.query_one("#filter").cursor_blink = False
        await pilot.press("enter", "s", "s")  # device -> status -> fps (descending)
        await pilot.pause()

    assert snap_compare(fixed_app(), terminal_size=(80, 24), run_before=run_before)


async def open_dock_cam1(pilot) -> None:
    """The first row (dock-cam1), its frames and a round of its live pictures, counts and objects drawn."""
    await settle(pilot, lambda app: app.state.applied_items >= FED)
    await pilot.press("enter")
    await settle(pilot, lambda app: getattr(app.screen, "frames_seen", 0) == len(FRAMES))
    screen = pilot.app.screen
    await settle(pilot, lambda app: screen.live is not None and screen.live.rounds > 0)
    screen.drain_detections()
    screen.drain_live()
    await pilot.pause()


def test_device_screen(snap_compare):
    async def run_before(pilot):
        await open_dock_cam1(pilot)

    assert snap_compare(fixed_app(), terminal_size=(80, 24), run_before=run_before)


def test_device_screen_shows_the_streams_frame_and_the_selected_objects_crop(snap_compare):
    """The frame in half blocks (the counting line's yellow across it), today's counts, the objects, and
    the person's crop once it is selected."""
    async def run_before(pilot):
        await open_dock_cam1(pilot)
        screen = pilot.app.screen
        screen.query_one("#objects").focus()
        await pilot.press("down")  # the person, whose crop the controller has
        await settle(pilot, lambda app: screen.query_one("#crop", Picture).rgb is not None)
        frame = screen.query_one("#frame-0", Picture)
        rows = frame.text.splitlines()
        assert rows and all(row and set(row) == {UPPER_HALF} for row in rows), frame.text[:200]
        assert frame.border_title.startswith("cam0 22:13:19")
        assert {"cam0 line door  in 31 · out 28", "cam0 zone dock  enter 46"} <= set(
            _cells(screen.query_one("#device-counts")))

    assert snap_compare(fixed_app(), terminal_size=(110, 40), run_before=run_before)


def _cells(widget) -> list[str]:
    return [line.strip() for line in str(widget.content).splitlines()]


def test_counts_screen(snap_compare):
    async def run_before(pilot):
        await settle(pilot, lambda app: app.state.applied_items >= FED)
        await pilot.press("t")
        await settle(pilot, lambda app: app.screen.counts is not None)

    assert snap_compare(fixed_app(), terminal_size=(80, 24), run_before=run_before)


def test_pin_confirmation(snap_compare):
    async def run_before(pilot):
        await open_dock_cam1(pilot)
        await pilot.press("p")
        await pilot.pause()

    assert snap_compare(fixed_app(), terminal_size=(80, 24), run_before=run_before)


def test_rollouts_screen_unimplemented(snap_compare):
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("o")
        await settle(pilot, lambda app: app.screen.loaded)

    assert snap_compare(fixed_app(), terminal_size=(80, 24), run_before=run_before)


def test_rollouts_screen(snap_compare):
    """ro-0002 selected: paused with its reason, three waves' bars, a failure, a skipped device."""
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("o")
        await settle(pilot, lambda app: app.screen.loaded)
        await pilot.press("down")
        await pilot.pause()

    assert snap_compare(fixed_app(ROLLOUTS), terminal_size=(80, 24), run_before=run_before)


def test_create_rollout_dialog(snap_compare):
    """The artifact list, the fields filled in, and the inline error for waves that do not rise."""
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("o")
        await settle(pilot, lambda app: app.screen.loaded)
        await pilot.press("n")
        await settle(pilot, lambda app: getattr(app.screen, "loaded", False))
        screen = pilot.app.screen
        for key, value in (("selector", "site=dock"), ("waves", "50,10")):
            screen.query_one(f"#{key}").value = value
        for box in screen.query("Input"):
            box.cursor_blink = False
        await pilot.press("down", "enter")  # the second artifact, then on to the fields
        await pilot.press("enter")  # create: refused in the dialog, the controller never asked
        await pilot.pause()

    assert snap_compare(fixed_app(ROLLOUTS), terminal_size=(80, 24), run_before=run_before)


def test_events_screen(snap_compare):
    async def run_before(pilot):
        await settle(pilot, lambda app: app.state.applied_items >= FED)
        await pilot.press("e")
        await pilot.pause()

    assert snap_compare(fixed_app(), terminal_size=(80, 24), run_before=run_before)


def test_help(snap_compare):
    async def run_before(pilot):
        await settle(pilot, lambda app: app.state.applied_items >= FED)
        await pilot.press("question_mark")
        await pilot.pause()

    assert snap_compare(fixed_app(), terminal_size=(80, 24), run_before=run_before)
