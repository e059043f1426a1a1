"""The device screen's live part and the counts screen against a real controller: a simulated agent publishes
objects, counts and a crop through PublishDetections and answers CaptureFrame down its Session."""
from __future__ import annotations

import asyncio
import time

from textual.widgets import DataTable, Static

from edgefleet.common.records import CountRecord, CountRow, ObjectEventRecord, SnapshotRecord, TrackedObject
from edgefleet.tui.app import FleetApp
from edgefleet.tui.picture import UPPER_HALF
from edgefleet.tui.screens.counts import CountsScreen
from edgefleet.tui.widgets.picture import Picture

from .agents import picture
from .conftest import until
from .test_app import open_device


def tracked(track_id: int, now: float, snapshot: bool, crossings=()) -> TrackedObject:
    return TrackedObject(f"{int(now * 1000) - track_id}-{track_id:06x}", "cam0", track_id, "person", 0, now - 20,
                         now - track_id, 0.9, (10.0, 10.0, 40.0, 90.0), zones=["dock"], crossings=list(crossings),
                         frames=40, ended=True, has_snapshot=snapshot)


def publish_today(cam, now: float) -> TrackedObject:
    """Two objects (the older with a crop), door crossings and dock entries this minute; the object with the crop."""
    minute = int(now // 60 * 60)
    old = tracked(2, now, True, [("door", "in", now - 5)])
    cam.publish_records([
        ObjectEventRecord("end", tracked(1, now, False)), ObjectEventRecord("end", old),
        SnapshotRecord("cam0", old.object_id, "crop", "person", old.first_seen, picture("crop"), 0.9),
        CountRecord([CountRow("cam0", minute, "line", "door", "person", "in", 3),
                     CountRow("cam0", minute, "line", "door", "person", "out", 1),
                     CountRow("cam0", minute, "zone", "dock", "person", "enter", 2)]),
    ])
    return old


def test_the_device_screen_shows_counts_objects_and_the_selected_crop(controller, agents):
    cam = agents("cam-a", labels={"site": "lab"})
    old = publish_today(cam, time.time())

    async def scenario():
        app = FleetApp(controller.address, controller.operator_token)
        async with app.run_test(size=(110, 40)) as pilot:
            screen = await open_device(pilot, cam.device_id)
            objects = screen.query_one("#objects", DataTable)
            await until(pilot, lambda: objects.row_count == 2, "the two objects")
            counts = str(screen.query_one("#device-counts", Static).content)
            assert "6 counted" in counts and "cam0 line door  in 3 · out 1" in counts and "dock  enter 2" in counts
            crop = screen.query_one("#crop", Picture)
            # the newest, selected first, has none (said once the screen has asked the controller)
            await until(pilot, lambda: "no snapshot of this object" in crop.text, "the newest object's missing crop")
            objects.focus()
            await pilot.press("down")
            await until(pilot, lambda: crop.rgb is not None, "the older object's crop")
            assert crop.border_title == f"person #{old.track_id}" and set(crop.text) <= {UPPER_HALF, "\n"}
            assert cam.captures >= 1  # the screen asked the device for its frame

    asyncio.run(scenario())


def test_the_device_screen_draws_the_streams_frame(controller, agents):
    cam = agents("cam-a")

    async def scenario():
        app = FleetApp(controller.address, controller.operator_token)
        async with app.run_test(size=(110, 40)) as pilot:
            screen = await open_device(pilot, cam.device_id)
            frame = screen.query_one("#frame-0", Picture)
            await until(pilot, lambda: frame.rgb is not None or "no frame" in frame.text, "the frame or why not")
            assert frame.rgb is not None, frame.text
            assert frame.border_title.startswith("cam0 ") and set(frame.text) <= {UPPER_HALF, "\n"}

    asyncio.run(scenario())


def test_the_counts_screen_sums_today_by_site(controller, agents):
    lab, other = agents("cam-a", labels={"site": "lab"}), agents("cam-b")
    now = time.time()
    publish_today(lab, now)
    other.publish_records([CountRecord([CountRow("cam0", int(now // 60 * 60), "line", "door", "person", "in", 4)])])

    async def scenario():
        app = FleetApp(controller.address, controller.operator_token)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("t")
            screen = await until(pilot, lambda: isinstance(app.screen, CountsScreen) and app.screen, "the screen")
            await until(pilot, lambda: screen.counts is not None, "the counts")
            table = screen.query_one("#fleet-counts", DataTable)
            shown = {tuple(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)}
            assert shown == {("-", "line", "door", "person", "in", "4"), ("lab", "line", "door", "person", "in", "3"),
                             ("lab", "line", "door", "person", "out", "1"),
                             ("lab", "zone", "dock", "person", "enter", "2")}
            assert "total 10" in str(screen.query_one("#counts-title", Static).content)

    asyncio.run(scenario())
