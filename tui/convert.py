"""FleetControl messages -> `tui.views`. The only TUI module (with `tui.client`) that knows protobuf."""
from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from edgefleet.v1 import fleet_pb2, types_pb2

from .views import (
    SKIPPED,
    ArtifactView,
    CountsView,
    CountView,
    DeviceView,
    Dropped,
    EventEntry,
    FleetItem,
    FrameView,
    Health,
    ObjectView,
    PictureView,
    Plan,
    PlanOverride,
    Removed,
    RolloutDeviceView,
    RolloutRequest,
    RolloutSpecView,
    RolloutView,
    TrackedObjectView,
    WaveView,
)

_STATUS = {fleet_pb2.ONLINE: "online", fleet_pb2.STALE: "stale", fleet_pb2.OFFLINE: "offline"}


def seconds(ts: Timestamp) -> float | None:
    """Unix seconds, or None for an unset timestamp."""
    if not ts.seconds and not ts.nanos:
        return None
    return ts.ToNanoseconds() / 1e9


def plan_from_pb(pb: types_pb2.RuntimePlan) -> Plan | None:
    if pb.ByteSize() == 0:
        return None
    return Plan(
        model=pb.model, artifact_sha256=pb.artifact_sha256, backend=pb.backend, precision=pb.precision,
        input_width=pb.input_width, input_height=pb.input_height, detect_interval=pb.detect_interval,
        latency_budget_ms=round(pb.latency_budget_ms, 3), reason=pb.reason,
    )


def plan_to_pb(plan: Plan) -> types_pb2.RuntimePlan:
    """The plan to pin: what the device runs, without the agent's reason for it."""
    return types_pb2.RuntimePlan(
        model=plan.model, artifact_sha256=plan.artifact_sha256, backend=plan.backend, precision=plan.precision,
        input_width=plan.input_width, input_height=plan.input_height, detect_interval=plan.detect_interval,
        latency_budget_ms=plan.latency_budget_ms,
    )


def override_from_pb(pb: types_pb2.SetPlan) -> PlanOverride | None:
    if pb.ByteSize() == 0:
        return None
    return PlanOverride(
        pinned=plan_from_pb(pb.pinned), max_input_size=pb.max_input_size,
        min_detect_interval=pb.min_detect_interval, max_detect_interval=pb.max_detect_interval,
    )


def health_from_pb(pb: types_pb2.HealthSample, received: float | None) -> Health | None:
    if pb.ByteSize() == 0:
        return None
    return Health(
        time=seconds(pb.time) or received,
        fps=round(pb.fps, 3), detect_fps=round(pb.detect_fps, 3),
        inference_ms_p50=round(pb.inference_ms_p50, 3), inference_ms_p95=round(pb.inference_ms_p95, 3),
        latency_ms_p95=round(pb.latency_ms_p95, 3),
        temperature_c=round(pb.temperature_c, 2) if pb.temperature_c else None,
        outbox_depth=pb.outbox_depth, frames_total=pb.frames_total, frames_dropped=pb.frames_dropped,
        detections_total=pb.detections_total, cpu_percent=round(pb.cpu_percent, 2),
    )


def device_from_pb(pb: fleet_pb2.Device) -> DeviceView:
    last_seen = seconds(pb.last_seen)
    return DeviceView(
        device_id=pb.device_id, hostname=pb.hostname, status=_STATUS.get(pb.status, "offline"),
        last_seen=last_seen, enrolled=seconds(pb.enrolled), agent_version=pb.agent_version,
        platform=pb.profile.platform, machine=pb.profile.machine, accelerators=tuple(pb.profile.accelerators),
        gpu_name=pb.profile.gpu_name, plan=plan_from_pb(pb.plan),
        override=override_from_pb(pb.plan_override) if pb.HasField("plan_override") else None,
        health=health_from_pb(pb.health, last_seen), streams=tuple(pb.streams),
        labels=tuple(sorted(pb.labels.items())), operator_labels=tuple(sorted(pb.operator_labels)),
        connected=pb.connected,
        detections_stored=pb.detections_stored, acked_sequence=pb.acked_sequence,
        config_drift=config_drift(pb.config),
    )


def config_drift(config: fleet_pb2.DeviceConfig) -> str:
    """The device screen's Config line: the applied version against the desired one ("" when none is set)."""
    if not config.desired_version:
        return ""
    if config.in_sync:
        return f"v{config.applied_version} applied, in sync ({config.how})"
    text = f"v{config.applied_version} applied, v{config.desired_version} desired"
    if config.refused_version == config.desired_version:
        return f"{text}: refused: {'; '.join(config.errors)}"
    return text + " (not applied yet)"


def _state(value: int) -> str:
    """A rollout state's name; a state newer than these stubs reads as "unknown", not an error."""
    try:
        return fleet_pb2.RolloutState.Name(value).lower()
    except ValueError:
        return "unknown"


def _deploy_state(value: int) -> str:
    """A device's DeploymentStatus state in lower case; "pending" before it reported anything."""
    if value == types_pb2.DeploymentStatus.STATE_UNSPECIFIED:
        return "pending"
    try:
        return types_pb2.DeploymentStatus.State.Name(value).lower()
    except ValueError:
        return "unknown"


def rollout_device_from_pb(pb: fleet_pb2.RolloutDevice) -> RolloutDeviceView:
    """A device the controller skipped as incompatible says so in its reason ("skipped: no TensorRT …")."""
    if pb.reason.startswith("skipped:"):
        return RolloutDeviceView(pb.device_id, -1, SKIPPED, pb.reason.removeprefix("skipped:").strip())
    return RolloutDeviceView(pb.device_id, pb.wave, _deploy_state(pb.state), pb.reason)


def rollout_from_pb(pb: fleet_pb2.Rollout) -> RolloutView:
    spec = pb.spec
    return RolloutView(
        rollout_id=pb.rollout_id, artifact_sha256=pb.artifact_sha256,
        state=_state(pb.state),
        waves=tuple(
            WaveView(w.index, w.target, w.succeeded, w.failed, _state(w.state))
            for w in pb.waves
        ),
        devices=tuple(rollout_device_from_pb(d) for d in pb.devices),
        created=seconds(pb.created), reason=pb.reason,
        spec=RolloutSpecView(
            selector=tuple(sorted(spec.selector.items())), canary=spec.canary,
            waves_percent=tuple(spec.waves_percent), gate_fps_ratio=round(spec.gate_fps_ratio, 3),
            max_failures=spec.max_failures,
        ) if pb.HasField("spec") else None,
    )


def rollout_request_to_pb(request: RolloutRequest) -> fleet_pb2.CreateRolloutRequest:
    return fleet_pb2.CreateRolloutRequest(
        artifact_sha256=request.artifact_sha256, selector=dict(request.selector), canary=request.canary,
        waves_percent=list(request.waves_percent), gate_fps_ratio=request.gate_fps_ratio,
        max_failures=request.max_failures,
    )


def artifact_from_pb(pb: types_pb2.Artifact) -> ArtifactView:
    m = pb.manifest
    return ArtifactView(
        sha256=m.sha256, name=m.name, format=m.format, size_bytes=m.size_bytes, precision=m.precision,
        input_width=m.input_width, input_height=m.input_height, created=seconds(m.created),
    )


def fleet_event_from_pb(pb: fleet_pb2.FleetEvent) -> list[FleetItem]:
    """What one FleetEvent says, in order; a non-zero `dropped` total comes last."""
    items: list[FleetItem] = []
    when = seconds(pb.time)
    body = pb.WhichOneof("body")
    if body == "device":
        items.append(device_from_pb(pb.device))
    elif body == "removed_device_id":
        items.append(Removed(pb.removed_device_id))
    elif body == "rollout":
        rollout = rollout_from_pb(pb.rollout)
        items.append(rollout)
        items.append(EventEntry(when or 0.0, "rollout", f"rollout {rollout.rollout_id} is {rollout.state}"
                                + (f": {rollout.reason}" if rollout.reason else "")))
    elif body == "message":
        items.append(EventEntry(when or 0.0, "fleet", pb.message, _device_in(pb.message)))
    if pb.dropped:
        items.append(Dropped(pb.dropped))
    return items


def _device_in(message: str) -> str:
    """The device id in a controller message: "cam-a (cam-a-1f2e3d) connected", "cam-a enrolled as cam-a-1f2e3d"."""
    _, enrolled, rest = message.partition(" enrolled as ")
    if enrolled:
        return rest.split()[0] if rest.split() else ""
    start = message.find("(")
    end = message.find(")", start + 1)
    return message[start + 1:end] if 0 <= start < end else ""


def frame_from_pb(pb: types_pb2.FrameDetections, dropped: int = 0) -> FrameView:
    return FrameView(
        device_id=pb.device_id, stream_id=pb.stream_id, sequence=pb.sequence, frame_index=pb.frame_index,
        capture_time=seconds(pb.capture_time),
        objects=tuple(ObjectView(d.track_id, d.label, round(d.score, 3), d.predicted) for d in pb.detections),
        dropped=dropped,
    )


# ---- objects, counts, pictures ----

def picture_from_pb(pb: types_pb2.Snapshot) -> PictureView:
    return PictureView(pb.device_id, pb.stream_id, pb.kind, pb.jpeg, seconds(pb.time), pb.object_id, pb.label,
                       pb.score)


def tracked_object_from_pb(pb: types_pb2.TrackedObject) -> TrackedObjectView:
    return TrackedObjectView(
        pb.object_id, pb.device_id, pb.stream_id, pb.track_id, pb.label, seconds(pb.first_seen),
        seconds(pb.last_seen), pb.best_score, tuple(pb.zones), tuple((c.line, c.direction) for c in pb.crossings),
        pb.ended, pb.has_snapshot)


def counts_from_pb(pb: fleet_pb2.CountObjectsResponse) -> CountsView:
    return CountsView(tuple(CountView(b.kind, b.name, b.label, b.direction, b.count, b.stream_id, b.group,
                                      b.device_id) for b in pb.buckets), pb.total)
