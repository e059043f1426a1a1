"""What a failed or aborted rollout does to its devices, over the real controller and gateway with
scripted Sessions: CancelDeployment to those still at work, Rollback (--on-failure rollback, the
default) to those that switched, nothing to them with --on-failure halt; and the text the rollout
shows (pending devices, "aborted", wave states, ids by prefix, newest first)."""
from __future__ import annotations

import grpc
import pytest

from edgefleet.v1 import fleet_pb2

from ..conftest import wait_for
from .test_rollouts_controller import ScriptedDevice, State, push


@pytest.fixture
def model_bytes():
    return bytes(range(256)) * 1024


def actions(device: ScriptedDevice, action: str):
    return [getattr(c, action) for c in device.commands if c.WhichOneof("action") == action]


def get(control, rollout_id: str) -> fleet_pb2.Rollout:
    return control.GetRollout(fleet_pb2.GetRolloutRequest(rollout_id=rollout_id), timeout=5)


def three_waves(channel, control, model_bytes, **spec):
    """Four devices in waves 1 / 1 / 2, and the canary and the second wave switched (ACTIVE)."""
    sha = push(control, model_bytes).manifest.sha256
    devices = {d.id: d for d in (ScriptedDevice(channel, f"cam-{i}") for i in range(4))}
    rollout = control.CreateRollout(fleet_pb2.CreateRolloutRequest(
        artifact_sha256=sha, canary=1, waves_percent=[50, 100], **spec), timeout=5)
    rid = rollout.rollout_id
    waves = [[devices[d.device_id] for d in rollout.devices if d.wave == w] for w in range(3)]
    for wave in waves[:2]:
        for device in wave:
            wait_for(device.deploys, 10, f"the deploy to {device.id}")
            device.report(rid, sha, State.ACTIVE, "passed: 20 frames, 1.00x throughput, agreement 1.00")
    wait_for(lambda: all(d.deploys() for d in waves[2]), 10, "the third wave's deploys")
    return rid, sha, waves


def test_a_failed_wave_sends_the_devices_that_switched_back_and_stops_the_others(channel, control, model_bytes):
    rid, sha, (canary, second, third) = three_waves(channel, control, model_bytes)
    failing, testing = third
    testing.report(rid, sha, State.SHADOW_TESTING)
    failing.report(rid, sha, State.FAILED, "shadow test failed: throughput 0.41x")
    failed = wait_for(lambda: (r := get(control, rid)).state == fleet_pb2.FAILED and r, 10, "the rollout to fail")
    assert "1 device(s) failed, more than --max-failures 0" in failed.reason
    assert "1 device(s) told to stop their deployment" in failed.reason
    assert "2 device(s) that switched sent back to their previous engine" in failed.reason
    # the switched devices get Rollback, the one still testing CancelDeployment, the failed one nothing
    for device in canary + second:
        assert wait_for(lambda d=device: actions(d, "rollback"), 10, f"Rollback to {device.id}")
        assert not actions(device, "cancel_deployment")
    cancel = wait_for(lambda: actions(testing, "cancel_deployment"), 10, "CancelDeployment")[0]
    assert cancel.rollout_id == rid and "failed" in cancel.reason
    assert not actions(failing, "rollback") and not actions(failing, "cancel_deployment")
    by_id = {d.device_id: d for d in get(control, rid).devices}
    assert by_id[canary[0].id].reason.startswith("rolling back")
    # the agents answer as theirs do: ROLLED_BACK, and FAILED "cancelled: …"
    for device in canary + second:
        device.report(rid, sha, State.ROLLED_BACK, f"rollback command: rollout {rid} failed (--on-failure rollback)")
    testing.report(rid, sha, State.FAILED, f"cancelled: rollout {rid} failed")
    done = wait_for(lambda: (r := get(control, rid)) and all(
        d.state in (State.ROLLED_BACK, State.FAILED) for d in r.devices) and r, 10, "every device's answer")
    assert [d.state for d in done.devices if d.device_id in {canary[0].id, second[0].id}] == [State.ROLLED_BACK] * 2
    assert [w.state for w in done.waves] == [fleet_pb2.FAILED] * 3
    assert [(w.succeeded, w.failed) for w in done.waves] == [(0, 1), (0, 1), (0, 2)]


def test_with_on_failure_halt_the_switched_devices_keep_the_new_engine(channel, control, model_bytes):
    rid, sha, (canary, second, third) = three_waves(channel, control, model_bytes, on_failure=fleet_pb2.HALT)
    assert get(control, rid).spec.on_failure == fleet_pb2.HALT
    third[0].report(rid, sha, State.FAILED, "shadow test failed")
    failed = wait_for(lambda: (r := get(control, rid)).state == fleet_pb2.FAILED and r, 10, "the rollout to fail")
    assert "2 device(s) keep the new engine (--on-failure halt)" in failed.reason
    wait_for(lambda: actions(third[1], "cancel_deployment"), 10, "CancelDeployment to the one still at work")
    assert not any(actions(d, "rollback") for d in canary + second)
    assert [d.state for d in failed.devices[:2]] == [State.ACTIVE, State.ACTIVE]


def test_abort_cancels_deployments_in_flight_and_a_late_switch_is_sent_back(channel, control, model_bytes):
    sha = push(control, model_bytes).manifest.sha256
    devices = [ScriptedDevice(channel, f"cam-{i}") for i in range(2)]
    rollout = control.CreateRollout(fleet_pb2.CreateRolloutRequest(artifact_sha256=sha, canary=2), timeout=5)
    rid = rollout.rollout_id
    assert [d.state for d in rollout.devices] == [State.STATE_UNSPECIFIED] * 2  # the CLI says "pending"
    for device in devices:
        wait_for(device.deploys, 10, "the deploys")
        device.report(rid, sha, State.SHADOW_TESTING)
    wait_for(lambda: all(d.state == State.SHADOW_TESTING for d in get(control, rid).devices), 10, "shadow tests")
    aborted = control.AbortRollout(fleet_pb2.RolloutRef(rollout_id=rid[:6], reason="wrong model"), timeout=5)
    assert aborted.rollout_id == rid and aborted.state == fleet_pb2.ABORTED
    assert aborted.reason.startswith("aborted by an operator: wrong model; 2 device(s) told to stop")
    assert aborted.waves[0].state == fleet_pb2.ABORTED  # its devices were at work when it ended
    for device in devices:
        cancel = wait_for(lambda d=device: actions(d, "cancel_deployment"), 10, "CancelDeployment")[0]
        assert cancel.rollout_id == rid and cancel.reason == f"rollout {rid} aborted"
    # one device's swap crossed its cancel: it reports ACTIVE after the abort and is sent back
    devices[0].report(rid, sha, State.ACTIVE, "passed")
    wait_for(lambda: actions(devices[0], "rollback"), 10, "Rollback to the device that switched late")
    assert not actions(devices[1], "rollback")


def test_rollout_ids_by_unique_prefix_and_lists_newest_first(channel, control, model_bytes):
    sha = push(control, model_bytes).manifest.sha256
    ScriptedDevice(channel, "cam-0")
    ids = [control.CreateRollout(fleet_pb2.CreateRolloutRequest(artifact_sha256=sha), timeout=5).rollout_id
           for _ in range(2)]
    listed = [r.rollout_id for r in control.ListRollouts(fleet_pb2.ListRolloutsRequest(), timeout=5).rollouts]
    assert listed == ids[::-1]
    assert get(control, ids[0][:7]).rollout_id == ids[0]
    with pytest.raises(grpc.RpcError) as err:
        get(control, "ro-")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "ambiguous" in err.value.details()
    assert ids[0] in err.value.details() and ids[1] in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        control.AbortRollout(fleet_pb2.RolloutRef(rollout_id="ro-zzzz"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "no rollout 'ro-zzzz'" in err.value.details()
