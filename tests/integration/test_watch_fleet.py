"""WatchFleet, device status from heartbeat age, and plan overrides sent down a device's Session."""
from __future__ import annotations

import queue
import threading

import grpc
import pytest

from edgefleet.fleet.channel import open_channel
from edgefleet.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, fleet_pb2_grpc, types_pb2

from ..conftest import ControllerThread
from .test_gateway import auth, batch, enroll


class RawSession:
    """A device's Session driven by the test: messages go up when it says, what comes down is queued."""

    def __init__(self, channel, token: str):
        self._up: queue.Queue = queue.Queue()
        self._up.put(agent_pb2.AgentMessage(hello=agent_pb2.Hello(agent_version="test", streams=["cam0"])))
        self._call = agent_pb2_grpc.AgentGatewayStub(channel).Session(
            iter(self._up.get, None), metadata=auth(token), timeout=60)
        self.down: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=lambda: [self.down.put(m) for m in self._call], daemon=True)
        self._reader.start()
        assert self.next().WhichOneof("body") == "accepted"

    def heartbeat(self, seq: int, fps: float) -> None:
        self._up.put(agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(
            seq=seq, health=types_pb2.HealthSample(fps=fps))))

    def next(self, timeout: float = 10) -> agent_pb2.ControllerMessage:
        return self.down.get(timeout=timeout)

    def answer(self, command: agent_pb2.Command, ok: bool = True, error: str = "") -> None:
        self._up.put(agent_pb2.AgentMessage(result=agent_pb2.CommandResult(
            command_id=command.command_id, ok=ok, error=error)))

    def close(self) -> None:
        self._up.put(None)  # half-close: the controller ends the stream
        self._reader.join(10)


class FleetWatch:
    """WatchFleet read on a thread; `until()` skips events until one matches."""

    def __init__(self, control):
        self._call = control.WatchFleet(fleet_pb2.WatchFleetRequest(), timeout=60)
        self._events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for event in self._call:
                self._events.put(event)
        except grpc.RpcError:
            pass  # cancelled at the end of the test

    def until(self, matches, timeout: float = 10) -> fleet_pb2.FleetEvent:
        seen = []
        while True:
            try:
                event = self._events.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no matching fleet event within {timeout}s; saw {seen}")
            seen.append(event.message or f"device {event.device.device_id}")
            if matches(event):
                return event

    def message(self, text: str) -> fleet_pb2.FleetEvent:
        return self.until(lambda e: text in e.message)

    def cancel(self) -> None:
        self._call.cancel()


@pytest.fixture
def watch(control):
    watch = FleetWatch(control)
    yield watch
    watch.cancel()


def test_snapshot_then_enrolled_connected_heartbeat_disconnected(channel, control, watch):
    first = enroll(channel, hardware_id="hw-1")
    watch.until(lambda e: e.device.device_id == first.device_id)  # registered: the snapshot (or its enrollment)

    second = enroll(channel, hardware_id="hw-2")
    enrolled = watch.until(lambda e: e.device.device_id == second.device_id)
    assert (enrolled.device.status, enrolled.device.connected) == (fleet_pb2.OFFLINE, False)
    watch.message(f"cam-a enrolled as {second.device_id}")

    session = RawSession(channel, second.device_token)
    connected = watch.until(lambda e: e.device.device_id == second.device_id and e.device.connected)
    assert connected.device.status == fleet_pb2.ONLINE and connected.device.agent_version == "test"
    watch.message(f"cam-a ({second.device_id}) connected")

    session.heartbeat(1, fps=12.5)
    beat = watch.until(lambda e: e.device.health.fps == 12.5)
    assert beat.device.device_id == second.device_id and beat.dropped == 0

    session.close()
    gone = watch.until(lambda e: e.device.device_id == second.device_id and not e.device.connected)
    assert gone.device.health.fps == 12.5  # the last state it reported
    watch.message(f"cam-a ({second.device_id}) disconnected")


@pytest.fixture
def quick_controller(tmp_path):
    """Thresholds below the heartbeat interval, so status flips within seconds.

    The STALE window is wide so that a busy machine's slow sweep still sees it.
    """
    ctl = ControllerThread(tmp_path / "fleet.db", stale_after_s=0.3, offline_after_s=1.5)
    yield ctl
    ctl.stop()


def test_status_goes_stale_then_offline_and_back_online(quick_controller):
    with grpc.insecure_channel(quick_controller.address) as channel, \
            open_channel(quick_controller.address, token=quick_controller.operator_token) as operator:
        control = fleet_pb2_grpc.FleetControlStub(operator)
        device = enroll(channel)
        watch = FleetWatch(control)
        try:
            watch.until(lambda e: e.device.device_id == device.device_id)
            publish = agent_pb2_grpc.AgentGatewayStub(channel).PublishDetections
            list(publish(iter([batch(1)]), metadata=auth(device.device_token), timeout=5))  # a sign of life

            stale = watch.until(lambda e: e.device.status == fleet_pb2.STALE)
            assert watch.until(lambda e: e.message).message == f"cam-a ({device.device_id}) is STALE"
            assert stale.device.device_id == device.device_id
            watch.message(f"cam-a ({device.device_id}) is OFFLINE")

            offline = control.ListDevices(fleet_pb2.ListDevicesRequest(status=fleet_pb2.OFFLINE), timeout=5)
            assert [d.device_id for d in offline.devices] == [device.device_id]
            online = control.ListDevices(fleet_pb2.ListDevicesRequest(status=fleet_pb2.ONLINE), timeout=5)
            assert list(online.devices) == []

            list(publish(iter([batch(2)]), metadata=auth(device.device_token), timeout=5))
            watch.message(f"cam-a ({device.device_id}) is ONLINE")
        finally:
            watch.cancel()


def test_plan_override_goes_down_the_open_session_and_again_on_reconnect(channel, control, watch):
    device = enroll(channel)
    session = RawSession(channel, device.device_token)
    watch.until(lambda e: e.device.device_id == device.device_id and e.device.connected)
    plan = types_pb2.SetPlan(max_input_size=320, min_detect_interval=2, max_detect_interval=6,
                             pinned=types_pb2.RuntimePlan(backend="onnxruntime"))

    call = control.SetPlanOverride.future(fleet_pb2.SetPlanOverrideRequest(device_id=device.device_id, plan=plan),
                                          timeout=5)
    command = session.next().command
    assert command.set_plan == plan and command.command_id
    session.answer(command)  # the call waits for the connected device's answer
    assert call.result().plan_override == plan
    watch.message(f"plan override for cam-a ({device.device_id}) set")
    watch.message(f"set_plan on {device.device_id}: done in")
    session.close()

    again = RawSession(channel, device.device_token)  # a device that reconnects gets the stored override
    assert again.next().command.set_plan == plan

    call = control.SetPlanOverride.future(fleet_pb2.SetPlanOverrideRequest(
        device_id=device.device_id, plan=types_pb2.SetPlan(clear=True)), timeout=5)
    command = again.next().command
    assert command.set_plan == types_pb2.SetPlan(clear=True)
    again.answer(command)
    assert not call.result().HasField("plan_override")
    again.close()
    got = control.GetDevice(fleet_pb2.GetDeviceRequest(device_id=device.device_id), timeout=5)
    assert not got.HasField("plan_override")


@pytest.mark.parametrize(("plan", "says"), [
    (None, "plan is empty"),
    (types_pb2.SetPlan(), "plan is empty"),
    (types_pb2.SetPlan(clear=True, max_input_size=320), "plan.clear=true"),
    (types_pb2.SetPlan(max_input_size=-32), "plan.max_input_size must be >= 0, got -32"),
    (types_pb2.SetPlan(min_detect_interval=5, max_detect_interval=2), "plan.min_detect_interval (5) >"),
])
def test_set_plan_override_rejects_bad_plans(channel, control, plan, says):
    device = enroll(channel)
    request = fleet_pb2.SetPlanOverrideRequest(device_id=device.device_id, plan=plan)
    with pytest.raises(grpc.RpcError) as err:
        control.SetPlanOverride(request, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in err.value.details()


def test_set_plan_override_for_an_unknown_device_is_not_found(control):
    request = fleet_pb2.SetPlanOverrideRequest(device_id="nope", plan=types_pb2.SetPlan(max_input_size=320))
    with pytest.raises(grpc.RpcError) as err:
        control.SetPlanOverride(request, timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
