"""The fleet TUI against a real controller: simulated agents over real gRPC, the app driven by the pilot."""
from __future__ import annotations

import asyncio
import io

import pytest
from rich.console import Console
from textual.widgets import DataTable, Input, Sparkline, Static

from edgefleet.tui.app import FleetApp
from edgefleet.tui.screens.create_rollout import CreateRolloutScreen
from edgefleet.tui.screens.device import DeviceScreen
from edgefleet.tui.screens.modals import ConfirmScreen
from edgefleet.tui.screens.rollouts import RolloutsScreen
from edgefleet.tui.widgets.fleet_table import FleetTable
from edgefleet.v1 import fleet_pb2, types_pb2

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


CPU = ("CPUExecutionProvider",)
State = types_pb2.DeploymentStatus


def upload(control, name: str = "m", data: bytes = b"model bytes") -> str:
    """Push an "onnx" artifact over FleetControl; its sha256."""
    def messages():
        yield fleet_pb2.UploadArtifactRequest(manifest=types_pb2.ArtifactManifest(name=name, format="onnx"))
        yield fleet_pb2.UploadArtifactRequest(chunk=data)

    return control.UploadArtifact(messages(), timeout=5).manifest.sha256


def printed(widget: Static) -> str:
    """What a Static shows, as plain text (it may hold a rich Table)."""
    console = Console(width=200, file=io.StringIO(), record=True)
    console.print(widget.content)
    return console.export_text()


def device_rows(app) -> dict[str, tuple[str, str, str]]:
    """The selected rollout's device table: device id -> (wave, state, reason)."""
    table = app.screen.query_one("#rollout-devices", DataTable)
    return {str(row[0]): (str(row[1]), str(row[2]), str(row[3]))
            for row in (table.get_row_at(i) for i in range(table.row_count))}


def test_rollouts_screen_pauses_and_resumes_a_real_rollout(controller, control):
    cams = [SimAgent(controller.address, name, providers=CPU).connect() for name in ("cam-a", "cam-b")]
    sha = upload(control)
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
                await until(pilot, lambda expected=expected: state() == expected, fleet_pb2.RolloutState.Name(expected))
                shown = fleet_pb2.RolloutState.Name(expected).lower()
                await until(pilot, lambda shown=shown: shown in str(table.get_row_at(0)[1]), f"{shown} on screen")
                # the footer offers what the state allows; the other key does nothing
                offered = {a for a in ("pause", "resume", "abort") if app.screen.check_action(a, ())}
                assert offered == ({"resume", "abort"} if key == "p" else {"pause", "abort"})
                await pilot.press(key)
                await pilot.pause()
                assert isinstance(app.screen, RolloutsScreen) and state() == expected

    try:
        asyncio.run(scenario())
    finally:
        for cam in cams:
            cam.close()


def test_create_a_rollout_from_the_modal(controller, control):
    cams = [SimAgent(controller.address, name, providers=CPU, labels={"site": "lab"}).connect()
            for name in ("cam-a", "cam-b")]
    old = SimAgent(controller.address, "old-box", labels={"site": "lab"}).connect()  # no onnxruntime
    upload(control, "older", b"older model")
    sha = upload(control, "yolo-lab", b"model bytes " * 1000)
    said: list[str] = []

    async def fill(pilot, **fields: str) -> None:
        """Set the fields, then Enter in the last one (a notification may lie over the Create button)."""
        for key, value in fields.items():
            box = pilot.app.screen.query_one(f"#{key}", Input)
            box.value = value
            box.focus()
        await pilot.press("enter")

    async def scenario():
        app = FleetApp(controller.address, controller.operator_token)
        async with app.run_test(size=(80, 24), message_hook=notifications(said)) as pilot:
            await pilot.press("o")
            await until(pilot, lambda: isinstance(app.screen, RolloutsScreen) and app.screen.loaded, "rollouts")
            await pilot.press("n")
            modal = await until(pilot, lambda: isinstance(app.screen, CreateRolloutScreen) and app.screen.loaded
                                and app.screen, "the artifact list")
            artifacts = modal.query_one("#artifacts", DataTable)
            assert artifacts.row_count == 2
            names = {str(artifacts.get_row_at(i)[0]): str(artifacts.get_row_at(i)[3]) for i in range(2)}
            assert names["yolo-lab"] == sha[:12]
            while modal.chosen() != sha:
                await pilot.press("down")
            await pilot.press("enter")  # chosen: on to the fields
            assert modal.query_one("#selector", Input).has_focus

            await fill(pilot, selector="site=lab", waves="50,20")  # not rising: caught before the controller
            error = modal.query_one("#form-error", Static)
            assert "waves: 50, 20 must rise strictly" in str(error.render())
            assert modal.query_one("#waves", Input).has_focus
            await fill(pilot, selector="site=nowhere", waves="50,100", max_failures="x")
            assert "max failures: 'x' is not a whole number" in str(error.render())

            await fill(pilot, max_failures="1")  # valid, but the controller finds no device
            await until(pilot, lambda: "no device matches" in str(error.render()), "the controller's refusal")
            assert any("FAILED_PRECONDITION" in m and "no device matches" in m for m in said)
            assert isinstance(app.screen, CreateRolloutScreen)  # still open, to fix it
            assert not control.ListRollouts(fleet_pb2.ListRolloutsRequest(), timeout=5).rollouts

            await fill(pilot, selector="site=lab", canary="1", waves="50,100", gate_fps_ratio="0.8")
            await until(pilot, lambda: isinstance(app.screen, RolloutsScreen), "the dialog closed")
            [created] = control.ListRollouts(fleet_pb2.ListRolloutsRequest(), timeout=5).rollouts
            assert created.artifact_sha256 == sha
            assert (dict(created.spec.selector), created.spec.canary, list(created.spec.waves_percent),
                    created.spec.max_failures) == ({"site": "lab"}, 1, [50, 100], 1)
            assert created.spec.gate_fps_ratio == pytest.approx(0.8)
            assert any(f"Rollout {created.rollout_id} created: 2 device(s) in 2 wave(s)" in m for m in said)

            table = app.screen.query_one("#rollouts", DataTable)
            await until(pilot, lambda: app.screen.selected() == created.rollout_id, "the new rollout selected")
            assert "running" in str(table.get_row_at(0)[1])
            rows = await until(pilot, lambda: len(device_rows(app)) == 3 and device_rows(app), "its devices")
            assert rows[old.device_id][1:] == ("skipped", "no onnxruntime on the device")

    try:
        asyncio.run(scenario())
    finally:
        for cam in (*cams, old):
            cam.close()


def test_rollouts_screen_follows_waves_and_device_reports(controller, control):
    cams = [SimAgent(controller.address, name, providers=CPU).connect() for name in ("cam-a", "cam-b", "cam-c")]
    old = SimAgent(controller.address, "old-box").connect()  # no onnxruntime: skipped
    sha = upload(control)
    rollout = control.CreateRollout(fleet_pb2.CreateRolloutRequest(
        artifact_sha256=sha, canary=1, waves_percent=[100]), timeout=5)
    rid = rollout.rollout_id
    by_id = {cam.device_id: cam for cam in cams}
    canary = by_id[next(d.device_id for d in rollout.devices if d.wave == 0 and not d.reason)]
    rest = [cam for cam in cams if cam is not canary]

    async def scenario():
        app = FleetApp(controller.address, controller.operator_token)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("o")
            waves = app.screen.query_one("#rollout-waves", Static)
            await until(pilot, lambda: len(device_rows(app)) == 4, "the rollout's devices")
            assert device_rows(app)[canary.device_id] == ("1", "pending", "")
            assert device_rows(app)[old.device_id] == ("—", "skipped", "no onnxruntime on the device")
            assert "canary" in printed(waves) and "0/1" in printed(waves)

            canary.report(rid, sha, State.DOWNLOADING)
            await until(pilot, lambda: device_rows(app)[canary.device_id][1] == "downloading", "downloading")
            canary.report(rid, sha, State.ACTIVE)
            await until(pilot, lambda: device_rows(app)[canary.device_id][1] == "active", "the canary active")
            await until(pilot, lambda: "1/1" in (w := printed(waves)) and "0/2" in w and "running" in w,
                        "wave 2 started")

            rest[0].report(rid, sha, State.ACTIVE)
            rest[1].report(rid, sha, State.FAILED, "shadow test failed: fps ratio 0.41 < 0.90")
            await until(pilot, lambda: device_rows(app)[rest[1].device_id][1] == "failed", "the failure")
            assert device_rows(app)[rest[1].device_id][2] == "shadow test failed: fps ratio 0.41 < 0.90"
            # the rollout failed: the switched device is sent back (--on-failure rollback, the default)
            await until(pilot, lambda: device_rows(app)[rest[0].device_id] == ("2", "active",
                                                                              "rolling back: rollout failed"),
                        "the switched device told to roll back")
            detail = app.screen.query_one("#rollout-detail", Static)
            await until(pilot, lambda: "1 device(s) failed, more than --max-failures 0" in str(detail.render()),
                        "the rollout's reason")
            assert "1/2 ✗1" in printed(waves)
            table = app.screen.query_one("#rollouts", DataTable)
            assert "failed" in str(table.get_row_at(0)[1]) and "2/3 ✗1" in str(table.get_row_at(0)[4])

            # the canary switched engines: its device screen says which, and why
            canary.switch(types_pb2.RuntimePlan(model="m", backend="onnxruntime", artifact_sha256=sha,
                                                reason=f"rollout {rid}"))
            await pilot.press("tab")  # to the device table
            devices = app.screen.query_one("#rollout-devices", DataTable)
            while str(devices.get_row_at(devices.cursor_row)[0]) != canary.device_id:
                await pilot.press("down")
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, DeviceScreen), "the canary's device screen")
            engines = app.screen.query_one("#device-engines", Static)
            await until(pilot, lambda: f"rollout {rid}" in str(engines.render()), "the engine history")
            shown = str(engines.render())
            assert f"m onnxruntime {sha[:8]}" in shown and "yolov3-tiny-coco onnxruntime" in shown
            assert shown.index(sha[:8]) < shown.index("yolov3-tiny")  # newest first

    try:
        asyncio.run(scenario())
    finally:
        for cam in (*cams, old):
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


def test_a_refused_token_ends_the_app_with_the_reason(controller):
    """Retrying cannot make a token valid: the app exits 2 saying why, instead of a banner forever."""
    async def scenario():
        app = FleetApp(controller.address, "efo_not-a-token")
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.return_code is not None, "the app to exit")
        assert app.return_code == 2
        assert "refused the operator token: UNAUTHENTICATED: unknown or revoked token" in app.exit_reason

    asyncio.run(scenario())


def test_a_token_revoked_while_watching_ends_the_app(tmp_path):
    """The token is revoked, the controller restarts: the reconnect is refused and the app ends saying so."""
    first = ControllerThread(tmp_path / "fleet.db")
    token = first.controller.store.create_operator_token("doomed")
    second = None

    async def scenario():
        nonlocal second
        app = FleetApp(first.address, token)
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.state.connection.state == "connected", "the first connection")
            first.controller.store.revoke_operator_token(token)
            await asyncio.to_thread(first.stop)
            second = await asyncio.to_thread(ControllerThread, tmp_path / "fleet.db", 1, (), first.address)
            await until(pilot, lambda: app.return_code is not None, "the app to exit", timeout=30)
        assert app.return_code == 2 and "UNAUTHENTICATED" in app.exit_reason

    try:
        asyncio.run(scenario())
    finally:
        if second is not None:
            second.stop()


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
