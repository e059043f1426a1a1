"""Layout at 80×24, one snapshot per screen, rendered from the fixed fleet in `fixed.py`.

Update after an intended change with `pytest tests/tui/test_snapshots.py --snapshot-update`
and look at the SVGs (the report pytest-textual-snapshot writes shows old and new side by side).
"""
from __future__ import annotations

import time

import pytest

from edgefleet.tui.app import FleetApp

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


def test_device_screen(snap_compare):
    async def run_before(pilot):
        await settle(pilot, lambda app: app.state.applied_items >= FED)
        await pilot.press("enter")  # the first row: dock-cam1
        await settle(pilot, lambda app: getattr(app.screen, "frames_seen", 0) == len(FRAMES))
        app = pilot.app
        app.screen.drain_detections()
        await pilot.pause()

    assert snap_compare(fixed_app(), terminal_size=(80, 24), run_before=run_before)


def test_pin_confirmation(snap_compare):
    async def run_before(pilot):
        await settle(pilot, lambda app: app.state.applied_items >= FED)
        await pilot.press("enter")
        await settle(pilot, lambda app: getattr(app.screen, "frames_seen", 0) == len(FRAMES))
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
