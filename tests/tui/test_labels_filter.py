"""The fleet TUI's filter takes label selectors, and a device's labels (the operator's starred) show on its
screen: simulated agents over real gRPC to a real controller, the app driven by the pilot."""
from __future__ import annotations

import asyncio

import pytest

from edgefleet.tui.app import FleetApp
from edgefleet.tui.state import matches
from edgefleet.tui.views import DeviceView
from edgefleet.v1 import fleet_pb2

from .conftest import until
from .test_app import open_device, rows, text


@pytest.mark.parametrize(("needle", "shown"), [
    ("site=lab", True),
    ("site=lab,tier in (a,b)", True),
    ("site!=lab", False),
    ("!owner", True),
    ("owner", True),  # no selector sign: a substring, of the id here
    ("site=yard", False),
    ("site=(", False),  # half typed: a substring, which nothing has
    ("lab", True),  # a substring of the label site=lab
])
def test_a_filter_with_a_selector_sign_selects_by_labels(needle, shown):
    device = DeviceView("owner-cam-1", "cam", labels=(("site", "lab"), ("tier", "a")))
    assert matches(device, needle) is shown


def test_the_filter_selects_by_labels_and_the_device_screen_shows_them(controller, agents, control):
    lab = agents("cam-lab", labels={"site": "lab"})
    yard = agents("cam-yard", labels={"site": "yard"})

    async def scenario():
        app = FleetApp(controller.address, controller.operator_token)
        async with app.run_test() as pilot:
            await until(pilot, lambda: set(rows(app)) == {lab.device_id, yard.device_id}, "the two devices")
            await pilot.press("slash", *"site=lab")
            await until(pilot, lambda: rows(app) == [lab.device_id], "only the lab device")
            assert "filter “site=lab”: 1 shown" in text(app, "#counts")
            await pilot.press("enter")

            control.SetDeviceLabels(fleet_pb2.SetDeviceLabelsRequest(device_id=yard.device_id, set={"site": "lab"}),
                                    timeout=10)
            await until(pilot, lambda: set(rows(app)) == {lab.device_id, yard.device_id},
                        "the yard device, now site=lab by its operator label")

            await open_device(pilot, yard.device_id)
            await until(pilot, lambda: "Labels    site=lab*" in text(app, "#device-plan"), "the operator's label")

    asyncio.run(scenario())
