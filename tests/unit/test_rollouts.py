"""Rollout rules that need no server: who is compatible, which specs are valid, how waves read."""
from __future__ import annotations

import pytest

from edgefleet.fleet.convert import rollout_to_pb
from edgefleet.fleet.errors import InvalidArgument
from edgefleet.fleet.rollout_store import DeployState, RolloutDeviceRecord, RolloutRecord, RolloutSpec, RolloutState
from edgefleet.fleet.rollouts import Requirements, incompatibility, validate_spec
from edgefleet.fleet.store import DeviceRecord
from edgefleet.v1 import fleet_pb2

ORIN = {"tensorrt_version": "10.3.0", "gpu_compute_capability": "8.7",
        "onnxruntime_providers": ["CPUExecutionProvider"]}


def device(profile: dict, hardware_id: str = "hw") -> DeviceRecord:
    return DeviceRecord("d", "host", hardware_id, 0.0, profile=profile)


@pytest.mark.parametrize("requirements, profile, hardware_id, says", [
    (Requirements("onnx"), ORIN, "hw", ""),
    (Requirements("onnx"), {}, "hw", "no onnxruntime"),
    (Requirements("onnx"), ORIN, "mqtt:cam", "MQTT-only"),
    (Requirements("tensorrt-engine", "10.3.1", "8.7"), ORIN, "hw", ""),
    (Requirements("tensorrt-engine", "10.4.0", "8.7"), ORIN, "hw", "TensorRT 10.4.0"),
    (Requirements("tensorrt-engine", "10.3.0", "8.6"), ORIN, "hw", "compute capability 8.6"),
    (Requirements("tensorrt-engine", "10.3.0", "8.7"), {"onnxruntime_providers": ["CPU"]}, "hw", "no TensorRT"),
    (Requirements("ultralytics-pt"), ORIN, "hw", "no ultralytics"),
    (Requirements("ultralytics-pt"), {"extra": {"ultralytics": "8.3"}}, "hw", ""),
    (Requirements("openvino-ir"), ORIN, "hw", "no openvino on the device"),
    (Requirements("openvino-ir"), {"extra": {"runtimes": "ncnn,openvino"}}, "hw", ""),
    (Requirements("ncnn"), {"extra": {"runtimes": "openvino"}}, "hw", "no ncnn on the device"),
    (Requirements("ncnn"), {"extra": {"runtimes": "ncnn"}}, "hw", ""),
    (Requirements("onnx", runtime="openvino"), ORIN, "hw", "no openvino"),   # labels.runtime decides
    (Requirements("onnx", runtime="onnxruntime"), ORIN, "hw", ""),
    (Requirements("ncnn"), {"extra": {"runtimes": "ncnn"}}, "mqtt:cam", "MQTT-only"),
])
def test_incompatibility_names_the_reason(requirements, profile, hardware_id, says):
    reason = incompatibility(requirements, device(profile, hardware_id))
    assert (says in reason) if says else reason == ""


@pytest.mark.parametrize("spec, says", [
    (RolloutSpec({}, canary=0), "canary"),
    (RolloutSpec({}, waves_percent=(50, 10, 100)), "rise"),
    (RolloutSpec({}, waves_percent=(10, 50)), "100"),
    (RolloutSpec({}, waves_percent=(0, 100)), "rise"),
    (RolloutSpec({}, gate_fps_ratio=float("nan")), "gate_fps_ratio"),
    (RolloutSpec({}, gate_min_agreement=1.5), "gate_min_agreement"),
    (RolloutSpec({}, max_failures=-1), "max_failures"),
])
def test_bad_specs_are_refused_naming_the_field(spec, says):
    with pytest.raises(InvalidArgument, match=says):
        validate_spec(spec)


def test_wave_states_follow_the_devices():
    devices = [RolloutDeviceRecord("a", 0, DeployState.ACTIVE), RolloutDeviceRecord("b", 1, DeployState.DOWNLOADING),
               RolloutDeviceRecord("c", 1, DeployState.FAILED), RolloutDeviceRecord("d", 2),
               RolloutDeviceRecord("e", -1, reason="skipped: no onnxruntime on the device")]
    rollout = RolloutRecord("ro-1", "f" * 64, RolloutState.RUNNING, RolloutSpec({}, max_failures=1), 1, 0.0, 0.0,
                            devices=devices)
    pb = rollout_to_pb(rollout)
    assert [(w.target, w.succeeded, w.failed, w.state) for w in pb.waves] == [
        (1, 1, 0, fleet_pb2.SUCCEEDED), (2, 0, 1, fleet_pb2.RUNNING), (1, 0, 0, fleet_pb2.PENDING)]
    assert [d.device_id for d in pb.devices if d.reason.startswith("skipped")] == ["e"]
