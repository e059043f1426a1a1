"""Protobuf <-> the agent's dataclasses. Protobuf types stop here (and in agent.inference's servicer,
and edgefleet.common.convert for the detection records): the loop, the supervisor and the link's
callers work on HardwareProfile, DevicePlan, HealthSample, Hello, DeploymentStatus and commands.

Conversions build the messages with keyword arguments, which refuse a field the message does not
have, so a misnamed field fails loudly instead of vanishing; tests/unit/test_agent_convert.py
compares each dataclass's fields with its message's, with the differences that are meant.
"""
from __future__ import annotations

from dataclasses import asdict

from edgefleet.adaptive.plan import DevicePlan
from edgefleet.adaptive.probe import HardwareProfile
from edgefleet.common.convert import snapshot_to_pb, timestamp
from edgefleet.common.records import SnapshotRecord
from edgefleet.v1 import agent_pb2, types_pb2

from .artifacts import ArtifactInfo, SignedArtifact
from .desired import ApplyConfig, ConfigStatus
from .engines import CancelDeployment, DeploymentStatus, DeployRequest
from .health import HealthSample
from .messages import CaptureFrame, Command, Hello, Ping, PlanOverride, Restart, Rollback, SetPlan, Unsupported
from .shadow import GateParams


def profile_to_pb(profile: HardwareProfile) -> types_pb2.HardwareProfile:
    """The message's fields, and what it has no field for as strings in its `extra` map."""
    return types_pb2.HardwareProfile(**profile.to_wire())


def plan_to_pb(plan: DevicePlan) -> types_pb2.RuntimePlan:
    return types_pb2.RuntimePlan(**asdict(plan))


def plan_from_pb(pb: types_pb2.RuntimePlan) -> DevicePlan:
    return DevicePlan(model=pb.model, artifact_sha256=pb.artifact_sha256, backend=pb.backend,
                      precision=pb.precision, input_width=pb.input_width, input_height=pb.input_height,
                      batch=pb.batch, detect_interval=pb.detect_interval, latency_budget_ms=pb.latency_budget_ms,
                      reason=pb.reason)


def health_to_pb(sample: HealthSample, time: float) -> types_pb2.HealthSample:
    """The sample as sent at `time` (Unix seconds); the agent does not measure `cpu_percent` (0)."""
    fields = asdict(sample)
    streams = [types_pb2.StreamHealth(**stream) for stream in fields.pop("streams")]
    return types_pb2.HealthSample(**fields, streams=streams, time=timestamp(time))


def hello_to_pb(hello: Hello, agent_version: str) -> agent_pb2.Hello:
    return agent_pb2.Hello(agent_version=agent_version, profile=profile_to_pb(hello.profile),
                           plan=plan_to_pb(hello.plan), streams=hello.streams, started=timestamp(hello.started),
                           config=config_status_to_pb(hello.config), labels=hello.labels)


def config_status_to_pb(status: ConfigStatus) -> agent_pb2.ConfigStatus:
    return agent_pb2.ConfigStatus(**asdict(status))


def deployment_to_pb(status: DeploymentStatus) -> types_pb2.DeploymentStatus:
    return types_pb2.DeploymentStatus(
        rollout_id=status.rollout_id, artifact_sha256=status.artifact_sha256,
        state=types_pb2.DeploymentStatus.State.Value(status.state), progress=status.progress, reason=status.reason,
        gate_metrics=status.gate_metrics)


def artifact_from_pb(artifact: types_pb2.Artifact) -> SignedArtifact:
    """The wire's Artifact as plain data, with the exact bytes its signature covers."""
    m = artifact.manifest
    info = ArtifactInfo(
        sha256=m.sha256, size_bytes=m.size_bytes, name=m.name, format=m.format, precision=m.precision,
        input_width=m.input_width, input_height=m.input_height, class_names=tuple(m.class_names),
        tensorrt_version=m.tensorrt_version, gpu_compute_capability=m.gpu_compute_capability,
        labels=dict(m.labels))
    return SignedArtifact(info, m.SerializeToString(deterministic=True), bytes(artifact.signature))


def deploy_from_pb(command: agent_pb2.Command) -> DeployRequest:
    """A Command carrying DeployArtifact, as plain data."""
    d = command.deploy
    return DeployRequest(command.command_id, d.rollout_id, artifact_from_pb(d.artifact),
                         GateParams(d.gate_fps_ratio, d.gate_min_agreement, float(d.gate_window_s),
                                    d.expect_different_detections))


def override_from_pb(pb: types_pb2.SetPlan) -> PlanOverride:
    return PlanOverride(pinned=plan_from_pb(pb.pinned) if pb.HasField("pinned") else None,
                        max_input_size=pb.max_input_size, min_detect_interval=pb.min_detect_interval,
                        max_detect_interval=pb.max_detect_interval, clear=pb.clear)


def command_from_pb(command: agent_pb2.Command) -> Command:
    """A controller's Command as plain data (Unsupported: an action this agent does not carry out)."""
    action = command.WhichOneof("action")
    if action == "deploy":
        return deploy_from_pb(command)
    if action == "set_plan":
        return SetPlan(command.command_id, override_from_pb(command.set_plan))
    if action == "rollback":
        return Rollback(command.command_id, command.rollback.reason)
    if action == "cancel_deployment":
        cancel = command.cancel_deployment
        return CancelDeployment(command.command_id, cancel.rollout_id, cancel.reason)
    if action == "ping":
        return Ping(command.command_id)
    if action == "restart":
        return Restart(command.command_id, command.restart.reason)
    if action == "apply_config":
        return ApplyConfig(command.command_id, command.apply_config.version, command.apply_config.document)
    if action == "capture_frame":
        return CaptureFrame(command.command_id, command.capture_frame.stream_id, command.capture_frame.max_width)
    return Unsupported(command.command_id, action or "none")


def result_to_pb(command_id: str, ok: bool, error: str = "", detail: str = "",
                 snapshot: SnapshotRecord | None = None) -> agent_pb2.AgentMessage:
    """A command's answer as the Session carries it; `snapshot` is CaptureFrame's picture."""
    result = agent_pb2.CommandResult(command_id=command_id, ok=ok, error=error, detail=detail)
    if snapshot is not None:
        result.snapshot.CopyFrom(snapshot_to_pb(snapshot))
    return agent_pb2.AgentMessage(result=result)
