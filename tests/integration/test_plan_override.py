"""An operator's plan override travels controller -> Session -> a running agent, which applies it
and reports the plan it now runs, with the reason, in its next heartbeat."""
from __future__ import annotations

import subprocess
import sys

import pytest

from edgefleet.fleet.channel import open_channel
from edgefleet.v1 import fleet_pb2, fleet_pb2_grpc, types_pb2

from ..conftest import wait_for

pytestmark = pytest.mark.slow




def test_an_override_reaches_the_running_agent(controller, vtest, tmp_path):
    log = tmp_path / "agent.log"
    with log.open("w") as err:
        agent = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.agent.cli", "run", "--controller", controller.address,
             "--source", str(vtest), "--state-dir", str(tmp_path / "agent"), "--enroll-key", "efk_test",
             "--name", "pinned-cam", "--loop", "--threads", "1"],
            stdout=subprocess.DEVNULL, stderr=err)
    try:
        with open_channel(controller.address, token=controller.operator_token) as channel:
            control = fleet_pb2_grpc.FleetControlStub(channel)
            devices = wait_for(lambda: control.ListDevices(fleet_pb2.ListDevicesRequest(), timeout=5).devices,
                               what="the agent to enroll")
            wait_for(lambda: "session open" in log.read_text(), what="the agent's session")
            control.SetPlanOverride(fleet_pb2.SetPlanOverrideRequest(
                device_id=devices[0].device_id, plan=types_pb2.SetPlan(min_detect_interval=4)), timeout=5)
            wait_for(lambda: "plan override: detecting every 4 frame(s)" in log.read_text(),
                     what="the agent to apply the override")
            device_id = devices[0].device_id

            def reported_plan():
                plan = control.GetDevice(fleet_pb2.GetDeviceRequest(device_id=device_id), timeout=5).plan
                return plan if plan.detect_interval == 4 else None

            plan = wait_for(reported_plan, what="the next heartbeat to carry the new plan")
            assert plan.reason == "operator override: bounded to detect every >= 4"
    finally:
        agent.terminate()
        agent.wait(timeout=60)
