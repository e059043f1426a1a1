"""The agent's dataclasses and their protobuf messages (agent.convert): a field added on one side
only fails here, unless it is one of the differences listed on purpose."""
from __future__ import annotations

import dataclasses

import pytest

from edgefleet.adaptive.plan import DevicePlan
from edgefleet.adaptive.probe import HardwareProfile
from edgefleet.agent.convert import (
    command_from_pb,
    deployment_to_pb,
    health_to_pb,
    hello_to_pb,
    plan_from_pb,
    plan_to_pb,
    profile_to_pb,
    result_to_pb,
)
from edgefleet.agent.engines import DeploymentStatus, DeployRequest
from edgefleet.agent.health import HealthSample, StreamHealth
from edgefleet.agent.messages import CaptureFrame, Hello, Ping, PlanOverride, Restart, Rollback, SetPlan, Unsupported
from edgefleet.common.convert import snapshot_from_pb
from edgefleet.common.records import SnapshotRecord
from edgefleet.v1 import agent_pb2, types_pb2

PROFILE_IN_EXTRA = {"platform_class", "model", "soc", "cpu_governor", "gpu_memory_bytes", "nvidia_driver_version",
                    "l4t_version", "power_mode", "power_mode_id", "thermal_zones", "cameras",
                    "runtimes", "openvino_devices", "ncnn_vulkan_gpus", "cpu_flags"}
"""HardwareProfile fields the message has no field for: they go as text in its `extra` map (the
thermal zones as their hottest, `temperature_c`; power_mode_id only into the fingerprint)."""

PAIRS = [
    # dataclass, message, fields only the dataclass has, fields only the message has (and why)
    (DevicePlan, types_pb2.RuntimePlan, set(), set()),
    (HardwareProfile, types_pb2.HardwareProfile, PROFILE_IN_EXTRA, {"extra"}),
    (HealthSample, types_pb2.HealthSample, set(), {"time", "cpu_percent"}),  # stamped when sent; not measured
    (StreamHealth, types_pb2.StreamHealth, set(), {"fps"}),  # not measured per stream
    (DeploymentStatus, types_pb2.DeploymentStatus, set(), set()),
    (Hello, agent_pb2.Hello, set(), {"agent_version"}),  # the link's own
    (PlanOverride, types_pb2.SetPlan, set(), set()),
]


@pytest.mark.parametrize("domain, message, only_domain, only_wire", PAIRS,
                         ids=[pair[0].__name__ for pair in PAIRS])
def test_each_dataclass_has_its_message_s_fields(domain, message, only_domain, only_wire):
    ours = {f.name for f in dataclasses.fields(domain)}
    wire = {f.name for f in message.DESCRIPTOR.fields}
    assert ours - wire == only_domain, "a dataclass field the message lacks: add it to the proto or list it here"
    assert wire - ours == only_wire, "a message field the dataclass lacks: add it to the dataclass or list it here"


def test_a_health_sample_arrives_whole():
    streams = (StreamHealth("door", "rtsp://cam/door", "running", 120, 3, ""),
               StreamHealth("yard", "grpc:ipv4:10.0.0.2:5000", "running", 7, 0, "bad frame"))
    sample = HealthSample(frames_total=127, detections_total=400, frames_dropped=3, outbox_depth=12, fps=14.5,
                          detect_fps=7.25, inference_ms_p50=21.5, inference_ms_p95=30.25, latency_ms_p95=44.0,
                          temperature_c=61.5, outbox_dropped=9, streams=streams)
    pb = health_to_pb(sample, 1_700_000_000.5)
    for field in dataclasses.fields(HealthSample):
        if field.name != "streams":
            assert getattr(pb, field.name) == pytest.approx(getattr(sample, field.name)), field.name
    assert [(s.stream_id, s.source, s.state, s.frames, s.dropped, s.error) for s in pb.streams] == \
        [dataclasses.astuple(s) for s in streams]
    assert pb.time.ToNanoseconds() == 1_700_000_000_500_000_000


def test_plan_round_trip_and_hello():
    plan = DevicePlan("yolov8n", "a" * 64, "onnxruntime", "fp32", 416, 320, 2, 3, 66.5, "default model; x")
    assert plan_from_pb(plan_to_pb(plan)) == plan
    profile = HardwareProfile(platform="x86_64-cpu", platform_class="cpu", cpu_cores=8, cameras=["/dev/video0"])
    hello = hello_to_pb(Hello(profile, plan, ["cam0", "cam1"], 1000.0), "0.1.0")
    assert (hello.agent_version, list(hello.streams), hello.plan.model) == ("0.1.0", ["cam0", "cam1"], "yolov8n")
    assert hello.profile.cpu_cores == 8 and hello.profile.extra["platform_class"] == "cpu"
    assert profile_to_pb(profile).extra["cameras"] == "/dev/video0"


def test_deployment_status_by_state_name():
    pb = deployment_to_pb(DeploymentStatus("r1", "b" * 64, "SHADOW_TESTING", 0.5, "", {"fps_ratio": 0.9}))
    assert pb.state == types_pb2.DeploymentStatus.SHADOW_TESTING and pb.progress == 0.5
    assert pb.gate_metrics["fps_ratio"] == pytest.approx(0.9)
    with pytest.raises(ValueError):
        deployment_to_pb(DeploymentStatus("r1", "b" * 64, "DONE"))


def test_commands_become_plain_data():
    pinned = types_pb2.SetPlan(pinned=types_pb2.RuntimePlan(model="small", detect_interval=2))
    assert command_from_pb(agent_pb2.Command(command_id="c1", set_plan=pinned)) == \
        SetPlan("c1", PlanOverride(pinned=DevicePlan(model="small", detect_interval=2)))
    bounds = types_pb2.SetPlan(max_input_size=320, min_detect_interval=2)
    assert command_from_pb(agent_pb2.Command(command_id="c2", set_plan=bounds)).override == \
        PlanOverride(max_input_size=320, min_detect_interval=2)
    assert command_from_pb(agent_pb2.Command(command_id="c3", rollback=agent_pb2.Rollback(reason="r"))) == \
        Rollback("c3", "r")
    assert command_from_pb(agent_pb2.Command(command_id="c4", ping=agent_pb2.Ping())) == Ping("c4")
    assert command_from_pb(agent_pb2.Command(command_id="c5", restart=agent_pb2.Restart(reason="r"))) == \
        Restart("c5", "r")
    assert command_from_pb(agent_pb2.Command(command_id="c7")) == Unsupported("c7", "none")
    capture = agent_pb2.CaptureFrame(stream_id="door", max_width=320)
    assert command_from_pb(agent_pb2.Command(command_id="c8", capture_frame=capture)) == CaptureFrame("c8", "door", 320)
    assert command_from_pb(agent_pb2.Command(command_id="c9", capture_frame=agent_pb2.CaptureFrame())) == \
        CaptureFrame("c9", "", 0)
    deploy = command_from_pb(agent_pb2.Command(command_id="c6", deploy=agent_pb2.DeployArtifact(rollout_id="r9")))
    assert isinstance(deploy, DeployRequest) and (deploy.command_id, deploy.rollout_id) == ("c6", "r9")


def test_a_result_carries_capture_frame_s_snapshot_whole():
    snapshot = SnapshotRecord("door", "", "live", "", 1_700_000_000.5, b"\xff\xd8jpeg\xff\xd9")
    message = result_to_pb("c1", True, detail="14 bytes", snapshot=snapshot)
    assert (message.result.command_id, message.result.ok, message.result.detail) == ("c1", True, "14 bytes")
    assert snapshot_from_pb(message.result.snapshot) == snapshot
    refused = result_to_pb("c2", False, error="unknown stream 'x'")
    assert not refused.result.HasField("snapshot") and refused.result.error == "unknown stream 'x'"


def test_the_agent_s_own_sample_converts(tmp_path):
    """The runner once sent a `rung` key that HealthSample lacks, and it vanished on the way: the
    sample the agent makes now is the message's, streams included."""
    import time

    from edgefleet.agent.options import RunOptions
    from edgefleet.agent.sources import open_source
    from edgefleet.agent.supervisor import Agent

    from .test_runner_controller import LADDER, FakeDetector

    options = RunOptions(controller="127.0.0.1:1", sources=["synthetic://64x64?frames=5"] * 2,
                         state_dir=tmp_path / "agent", stream_ids=["door", "yard"])
    agent = Agent(options, FakeDetector(LADDER[0]), open_source, HardwareProfile(), DevicePlan())
    try:
        pb = health_to_pb(agent.health_sample(), time.time())
        assert [(s.stream_id, s.source) for s in pb.streams] == [("door", "synthetic://64x64?frames=5"),
                                                                  ("yard", "synthetic://64x64?frames=5")]
    finally:
        agent.outbox.close()
