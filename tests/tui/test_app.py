"""The fleet TUI against a real controller: simulated agents over real gRPC, the app driven by the pilot."""
from __future__ import annotations

import asyncio

import pytest
from textual.widgets import Button, DataTable, Sparkline, Static

from edgefleet.v1 import fleet_pb2, types_pb2
from tui.app import FleetApp
from tui.screens.device import DeviceScreen
from tui.screens.modals import ConfirmScreen
from tui.widgets.fleet_table import FleetTable

from ..conftest import ControllerThread
from .agents import PLAN, SimAgent
from .conftest import notifications, until


def rows(app) -> list[str]:
    return list(app.screen.query_one(FleetTable).order)


def cell(app, device_id: str, column: str) -> str:
    return app.screen.query_one(FleetTable).cell_text(device_id, column)


def text(app, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


async def open_device(pilot, device_id: str) -> DeviceScreen:
    app = pilot.app
    await until(pilot, lambda: device_id in rows(app), f"{device_id} in the table")
    table = app.screen.query_one(FleetTable)
    while table.current_device() != device_id:
        await pilot.press("down")
    await pilot.press("enter")
    return await until(pilot, lambda: isinstance(app.screen, DeviceScreen) and app.screen, "the device screen")


def test_table_fills_updates_live_and_filters(controller, agents):
    cam = agents("cam-a", platform="rpi5")
    gate = agents("gate-1", platform="jetson-orin-nano")

    async def scenario():
        app = FleetApp(controller.address, controller.operator_token)
        async with app.run_test() as pilot:
            await until(pilot, lambda: set(rows(app)) == {cam.device_id, gate.device_id}, "the two devices")
            late = agents("yard-2", platform="rpi4")  # enrolled while watching: arrives as an event
            await until(pilot, lambda: late.device_id in rows(app), "the device enrolled later")
            assert rows(app) == sorted([cam.device_id, gate.device_id, late.device_id])  # by device id

            cam.heartbeat(fps=12.5, latency_ms=81.0, temperature_c=61.0, outbox_depth=7)
            await until(pilot, lambda: cell(app, cam.device_id, "fps") == "12.5", "cam-a's fps")
            assert (cell(app, cam.device_id, "p95"), cell(app, cam.device_id, "temp"),
                    cell(app, cam.device_id, "outbox")) == ("81.0", "61", "7")
            assert cell(app, gate.device_id, "fps") == "—"  # no heartbeat yet: unknown, not zero
            assert cell(app, cam.device_id, "plan") == "yolov3-tiny-coco fp32 416×416 1/2"
            assert "online" in cell(app, cam.device_id, "status")
            assert "3 devices" in text(app, "#counts")

            await pilot.press("slash", *"jetson")
            await until(pilot, lambda: rows(app) == [gate.device_id], "only the jetson")
            await pilot.press("enter")  # keep the filter, back to the table
            cam.heartbeat(fps=13.0)  # updates of filtered-out devices stay out
            await pilot.pause(0.6)
            assert rows(app) == [gate.device_id]
            assert 'filter “jetson”: 1 shown' in text(app, "#counts")

            await pilot.press("escape")
            await until(pilot, lambda: len(rows(app)) == 3, "all devices after clearing the filter")
            await pilot.press("slash", *"RPI")  # case-insensitive, over platform too
            await until(pilot, lambda: set(rows(app)) == {cam.device_id, late.device_id}, "the two Pis")

    asyncio.run(scenario())


def test_device_screen_shows_live_health_and_detections(controller, agents):
    cam = agents("cam-a")
    agents("cam-b")

    async def scenario():
        app = FleetApp(controller.address, controller.operator_token)
        async with app.run_test() as pilot:
            screen = await open_device(pilot, cam.device_id)
            assert cam.device_id in text(app, "#device-title")
            assert "yolov3-tiny-coco fp32 416×416 1/2" in text(app, "#device-plan")
            for i, fps in enumerate((10.0, 11.0, 12.0)):
                cam.heartbeat(fps=fps, latency_ms=50.0 + i, detections_total=30 * i)
                await pilot.pause(0.3)
            spark = app.screen.query_one("#fps-spark", Sparkline)
            await until(pilot, lambda: list(spark.data)[-3:] == [10.0, 11.0, 12.0], "three fps samples")
            assert "12.0" in text(app, "#fps-value")

            tracks = app.screen.query_one("#tracks", DataTable)

            def seen() -> bool:  # WatchDetections opens asynchronously: publish until frames arrive
                cam.publish((7, "person", 0.91), (9, "car", 0.64))
                return screen.frames_seen > 0 and tracks.row_count == 2

            await until(pilot, seen, "cam-a's tracks")
            labels = text(app, "#device-labels")
            assert "person" in labels and "car" in labels
            shown = {str(tracks.get_row_at(i)[1]) for i in range(tracks.row_count)}
            assert shown == {"person", "car"}

    asyncio.run(scenario())


def test_pin_plan_round_trips_through_the_controller(controller, agents, control):
    cam = agents("cam-a")

    async def scenario():
        app = FleetApp(controller.address, controller.operator_token)
        async with app.run_test() as pilot:
            await open_device(pilot, cam.device_id)
            await until(pilot, lambda: "yolov3-tiny" in text(app, "#device-plan"), "the plan")
            await pilot.press("p")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
            await pilot.press("y")
            await until(pilot, lambda: "pinned to" in text(app, "#device-plan"), "the pin on screen")

            got = control.GetDevice(fleet_pb2.GetDeviceRequest(device_id=cam.device_id), timeout=5)
            pinned = types_pb2.RuntimePlan()
            pinned.CopyFrom(PLAN)
            pinned.ClearField("reason")
            assert got.plan_override.pinned == pinned
            command = await asyncio.to_thread(cam.commands.get, timeout=10)
            assert command.set_plan.pinned == pinned  # delivered down the device's Session

            await pilot.press("c")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the clear confirmation")
            await pilot.press("n")  # cancelled: nothing changes
            await pilot.pause(0.3)
            assert control.GetDevice(fleet_pb2.GetDeviceRequest(device_id=cam.device_id), timeout=5) \
                .HasField("plan_override")
            await pilot.press("c", "y")
            await until(pilot, lambda: "Override  none" in text(app, "#device-plan"), "the pin cleared on screen")
            got = control.GetDevice(fleet_pb2.GetDeviceRequest(device_id=cam.device_id), timeout=5)
            assert not got.HasField("plan_override")

    asyncio.run(scenario())


def test_restart_and_rollback_reach_the_device(controller, agents):
    cam = agents("cam-a")
    said: list[str] = []

    async def scenario():
        app = FleetApp(controller.address, controller.operator_token)
        async with app.run_test(message_hook=notifications(said)) as pilot:
            await open_device(pilot, cam.device_id)
            for key, action in (("r", "restart"), ("b", "rollback")):
                await pilot.press(key)
                await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), f"the {action} confirmation")
                await pilot.press("y")
                command = await asyncio.to_thread(cam.commands.get, timeout=10)
                assert command.WhichOneof("action") == action  # down the device's own Session
                assert "from the TUI" in command.restart.reason + command.rollback.reason
                assert isinstance(app.screen, DeviceScreen)

    asyncio.run(scenario())


def test_rollouts_screen_pauses_and_resumes_a_real_rollout(controller, control):
    cams = []
    for name in ("cam-a", "cam-b"):
        cam = SimAgent(controller.address, name)
        cam.profile.onnxruntime_providers.append("CPUExecutionProvider")
        cams.append(cam.connect())

    def upload():
        yield fleet_pb2.UploadArtifactRequest(manifest=types_pb2.ArtifactManifest(name="m", format="onnx"))
        yield fleet_pb2.UploadArtifactRequest(chunk=b"model bytes")

    sha = control.UploadArtifact(upload(), timeout=5).manifest.sha256
    rollout_id = control.CreateRollout(fleet_pb2.CreateRolloutRequest(artifact_sha256=sha), timeout=5).rollout_id

    def state() -> int:
        return control.GetRollout(fleet_pb2.GetRolloutRequest(rollout_id=rollout_id), timeout=5).state

    async def scenario():
        app = FleetApp(controller.address, controller.operator_token)
        async with app.run_test() as pilot:
            await pilot.press("o")
            table = await until(pilot, lambda: (t := app.screen.query_one("#rollouts", DataTable)).row_count and t,
                                "the rollout in the table")
            assert rollout_id in str(table.get_row_at(0)[0])
            for key, expected in (("p", fleet_pb2.PAUSED), ("u", fleet_pb2.RUNNING)):
                await pilot.press(key)
                await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
                await pilot.press("y")
                await until(pilot, lambda: state() == expected, fleet_pb2.RolloutState.Name(expected))
                shown = fleet_pb2.RolloutState.Name(expected).lower()
                await until(pilot, lambda: shown in str(table.get_row_at(0)[1]), f"{shown} on screen")

    try:
        asyncio.run(scenario())
    finally:
        for cam in cams:
            cam.close()


def test_events_screen_logs_the_fleet_and_filters(controller, agents):
    async def scenario():
        app = FleetApp(controller.address, controller.operator_token)
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.state.connection.state == "connected", "the connection")
            cam = agents("cam-a")
            gate = agents("gate-1")
            await pilot.press("e")
            table = app.screen.query_one("#events", DataTable)

            def lines() -> list[str]:
                return [str(table.get_row_at(i)[1]) for i in range(table.row_count)]

            await until(pilot, lambda: f"gate-1 ({gate.device_id}) connected" in lines(), "gate-1's session")
            assert f"cam-a enrolled as {cam.device_id}" in lines()
            assert f"cam-a ({cam.device_id}) connected" in lines()
            await pilot.press("slash", *"gate")
            await until(pilot, lambda: lines() and all("gate" in line for line in lines()), "only gate-1's events")
            await pilot.press("escape")
            await until(pilot, lambda: any("cam-a" in line for line in lines()), "everything again")

    asyncio.run(scenario())


def test_a_refused_token_says_so_in_the_banner(controller):
    async def scenario():
        app = FleetApp(controller.address, "efo_not-a-token")
        async with app.run_test() as pilot:
            banner = app.screen.query_one("ConnectionBanner", Static)
            await until(pilot, lambda: "refused the operator token (UNAUTHENTICATED" in str(banner.render()),
                        "the refused-token banner")
            assert rows(app) == []

    asyncio.run(scenario())


@pytest.mark.slow
def test_lost_controller_shows_a_banner_and_reconnects(tmp_path):
    first = ControllerThread(tmp_path / "fleet.db")
    port, token = first.port, first.operator_token
    cam = SimAgent(first.address, "cam-a").connect()
    second = None

    async def scenario():
        nonlocal second
        app = FleetApp(first.address, token)
        async with app.run_test() as pilot:
            await until(pilot, lambda: rows(app) == [cam.device_id], "the device")
            banner = app.screen.query_one("ConnectionBanner", Static)
            assert not banner.display

            await asyncio.to_thread(first.stop)
            cam.close()
            await until(pilot, lambda: banner.display and "unreachable (UNAVAILABLE" in str(banner.render()),
                        "the lost-connection banner")
            assert rows(app) == [cam.device_id]  # the last known fleet stays on screen
            assert "last known" in text(app, "#counts")

            second = await asyncio.to_thread(
                ControllerThread, tmp_path / "fleet.db", listen=f"127.0.0.1:{port}", enroll_keys=("efk_test",))
            await until(pilot, lambda: app.state.connection.state == "connected", "the reconnect", timeout=30)
            await until(pilot, lambda: not banner.display, "the banner gone")
            again = await asyncio.to_thread(lambda: SimAgent(second.address, "gate-9").connect())
            try:
                await until(pilot, lambda: again.device_id in rows(app), "a device enrolled after the reconnect")
            finally:
                again.close()

    try:
        asyncio.run(scenario())
    finally:
        cam.close()
        if second is not None:
            second.stop()
