"""Protobuf <-> domain conversions. Protobuf types stop here: the store never sees them."""
from __future__ import annotations

from typing import TypeVar, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from edgefleet.common import convert as common
from edgefleet.common.convert import frame_to_pb as frame_to_pb  # the controller's modules import it from here
from edgefleet.common.convert import timestamp
from edgefleet.common.records import FrameRecord
from edgefleet.v1 import agent_pb2, fleet_pb2, types_pb2

from .errors import InvalidArgument
from .hub import Command, DeviceRemoved, FleetChange, FleetNote, RolloutChange
from .presence import Presence, Status
from .rollout_store import ArtifactRecord, DeployState, RolloutRecord, RolloutSpec, RolloutState
from .rollouts import Requirements, StatusReport, wave_counts, wave_state
from .selectors import parse_selector
from .store import DeviceRecord
from .twin_store import DeviceConfigView, config_view, status_dict

MessageT = TypeVar("MessageT", bound=Message)
ANSWER_BUDGET_BYTES = 3 * 1024 * 1024
"""A listing's answer stays under this, well inside gRPC's default 4 MiB receive limit."""


def fit_answer(items: list[MessageT], keep_newest: bool) -> tuple[list[MessageT], int]:
    """`items` (oldest first) cut to fit ANSWER_BUDGET_BYTES, and how many were left out: the oldest
    when `keep_newest`, else the newest (a page read forward from a cursor continues where it ends)."""
    order = reversed(items) if keep_newest else iter(items)
    kept: list[MessageT] = []
    size = 0
    for item in order:
        size += item.ByteSize() + 8  # the field's tag and length
        if size > ANSWER_BUDGET_BYTES and kept:
            break
        kept.append(item)
    if keep_newest:
        kept.reverse()
    return kept, len(items) - len(kept)


def to_dict(message: Message) -> dict:
    try:
        return json_format.MessageToDict(message, preserving_proto_field_name=True)
    except json_format.SerializeToJsonError as err:  # an invalid Timestamp inside, for one
        raise InvalidArgument(f"{message.DESCRIPTOR.name}: {err}") from err


_INT64_TYPES = frozenset({
    FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64,
})


def to_json_dict(message: Message) -> dict:
    """What every `--json` prints and the audit log stores: every field present (zeros and empty
    lists too, so `class_id` 0 is there), and 64-bit integers as numbers. (Protobuf's JSON mapping
    writes int64 as strings for JavaScript's sake; a reader of our output wants numbers.)"""
    try:
        data = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)
    except json_format.SerializeToJsonError as err:
        raise InvalidArgument(f"{message.DESCRIPTOR.name}: {err}") from err
    _int64_as_numbers(message.DESCRIPTOR, data)
    return data


def _int64_as_numbers(descriptor: Descriptor, data: dict) -> None:
    for field in descriptor.fields:
        if field.name in data:
            data[field.name] = _json_value(field, data[field.name])


def _json_value(field: FieldDescriptor, value):
    message_type = field.message_type
    if message_type is not None and message_type.GetOptions().map_entry:
        value_field = message_type.fields_by_name["value"]
        return {k: _json_scalar(value_field, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_scalar(field, v) for v in value]
    return _json_scalar(field, value)


def _json_scalar(field: FieldDescriptor, value):
    if field.type in _INT64_TYPES:
        return int(value)
    if field.message_type is not None and isinstance(value, dict) \
            and not field.message_type.full_name.startswith("google.protobuf."):
        _int64_as_numbers(field.message_type, value)
    return value


def from_dict(data: dict, message: Message) -> Message:
    return json_format.ParseDict(data or {}, message, ignore_unknown_fields=True)


def frame_from_pb(pb: types_pb2.FrameDetections) -> FrameRecord:
    """`edgefleet.common.convert.frame_from_pb`, its error an InvalidArgument."""
    try:
        return common.frame_from_pb(pb)
    except common.InvalidFrame as err:
        raise InvalidArgument(str(err)) from err


def device_to_pb(rec: DeviceRecord, status: Status, connected: bool) -> fleet_pb2.Device:
    device = fleet_pb2.Device(
        device_id=rec.device_id, hostname=rec.hostname, status=status_to_pb(status),
        enrolled=timestamp(rec.enrolled), agent_version=rec.agent_version,
        profile=from_dict(rec.profile, types_pb2.HardwareProfile()),
        plan=from_dict(rec.plan, types_pb2.RuntimePlan()),
        health=from_dict(rec.health, types_pb2.HealthSample()),
        acked_sequence=rec.acked_sequence, detections_stored=rec.detections_stored,
        streams=rec.streams, labels=rec.labels, connected=connected,
        reported_labels=rec.reported_labels, operator_labels=rec.operator_labels, revoked=rec.revoked is not None,
    )
    if rec.last_seen is not None:
        device.last_seen.CopyFrom(timestamp(rec.last_seen))
    if rec.plan_override:
        device.plan_override.CopyFrom(from_dict(rec.plan_override, types_pb2.SetPlan()))
    device.config.CopyFrom(device_config_to_pb(config_view(rec)))
    return device


def device_config_to_pb(view: DeviceConfigView) -> fleet_pb2.DeviceConfig:
    return fleet_pb2.DeviceConfig(
        device_id=view.device_id, desired_version=view.desired_version, desired_document=view.desired_document,
        desired_from=view.desired_from, applied_version=view.applied_version,
        applied_document=view.applied_document, refused_version=view.refused_version, errors=view.errors,
        in_sync=view.in_sync, how=view.how)


def config_status_from_pb(pb: agent_pb2.ConfigStatus) -> dict:
    """A device's ConfigStatus as fleet.twin stores it."""
    return status_dict(pb.applied_version, pb.refused_version, list(pb.errors), pb.applied_document, pb.how)


def status_to_pb(status: Status) -> fleet_pb2.DeviceStatus:
    return fleet_pb2.DeviceStatus.Value(status.name)


def rollout_state_to_pb(state: RolloutState) -> fleet_pb2.RolloutState:
    """The same number: `RolloutState` mirrors the message's enum (protoc's stubs type an enum's
    values as its wrapper class, which is an int at run time)."""
    return cast(fleet_pb2.RolloutState, int(state))


def deploy_state_to_pb(state: DeployState) -> types_pb2.DeploymentStatus.State:
    """The same number: `DeployState` mirrors DeploymentStatus.State (WAITING is its 0)."""
    return cast(types_pb2.DeploymentStatus.State, int(state))


def fleet_change_to_pb(change: FleetChange | RolloutChange | FleetNote | DeviceRemoved,
                       presence: Presence) -> list[fleet_pb2.FleetEvent]:
    """The device or rollout as it was at the change, then the change in words when it has some."""
    when = timestamp(change.time)
    if isinstance(change, FleetNote):
        return [fleet_pb2.FleetEvent(time=when, message=change.message)]
    if isinstance(change, DeviceRemoved):
        events = [fleet_pb2.FleetEvent(time=when, removed_device_id=change.device_id)]
    elif isinstance(change, RolloutChange):
        events = [fleet_pb2.FleetEvent(time=when, rollout=rollout_to_pb(change.rollout))]
    else:
        status = presence.status(change.device.last_seen, now=change.time)
        events = [fleet_pb2.FleetEvent(time=when, device=device_to_pb(change.device, status, change.connected))]
    if change.message:
        events.append(fleet_pb2.FleetEvent(time=when, message=change.message))
    return events


def command_to_pb(command: Command) -> agent_pb2.ControllerMessage:
    """Strict on purpose: an action or payload field that `Command` lacks is a bug, not input."""
    return agent_pb2.ControllerMessage(command=json_format.ParseDict(
        {"command_id": command.command_id, command.action: command.payload}, agent_pb2.Command()
    ))


# ---- artifacts and rollouts ----

def artifact_to_pb(record: ArtifactRecord) -> types_pb2.Artifact:
    return types_pb2.Artifact(manifest=types_pb2.ArtifactManifest.FromString(record.manifest),
                              signature=record.signature)


def requirements(record: ArtifactRecord) -> Requirements:
    """What the artifact needs of a device, from its signed manifest; `labels.runtime` (which `edgefleet
    model quantize` writes) names the runtime when the format alone does not (an INT8 ONNX for OpenVINO)."""
    manifest = types_pb2.ArtifactManifest.FromString(record.manifest)
    return Requirements(manifest.format, manifest.tensorrt_version, manifest.gpu_compute_capability,
                        manifest.labels.get("runtime", ""))


def rollout_spec(request: fleet_pb2.CreateRolloutRequest, gate_min_agreement: float,
                 gate_window_s: int) -> RolloutSpec:
    """The request's spec with the controller's defaults where it leaves a field at zero."""
    defaults = RolloutSpec(selector={})
    return RolloutSpec(
        selector=dict(request.selector), canary=request.canary or defaults.canary,
        waves_percent=tuple(request.waves_percent) or defaults.waves_percent,
        gate_fps_ratio=request.gate_fps_ratio or defaults.gate_fps_ratio,
        gate_min_agreement=gate_min_agreement, gate_window_s=gate_window_s,
        max_failures=request.max_failures, expect_different_detections=request.expect_different_detections,
        select=str(parse_selector(request.select)),  # checked here: a bad expression is refused before anything
        on_failure=on_failure_from_pb(request.on_failure),
    )


ON_FAILURE_TO_PB = {"rollback": fleet_pb2.ROLLBACK, "halt": fleet_pb2.HALT}


def on_failure_from_pb(value: int) -> str:
    """CreateRolloutRequest.on_failure as RolloutSpec's word; UNSPECIFIED is "rollback"."""
    if value == fleet_pb2.ON_FAILURE_UNSPECIFIED:
        return "rollback"
    for word, number in ON_FAILURE_TO_PB.items():
        if number == value:
            return word
    raise InvalidArgument(f"on_failure {value} is not an OnFailure (ROLLBACK or HALT)")


def rollout_to_pb(record: RolloutRecord) -> fleet_pb2.Rollout:
    spec = record.spec
    rollout = fleet_pb2.Rollout(
        rollout_id=record.rollout_id, artifact_sha256=record.artifact_sha256, state=rollout_state_to_pb(record.state),
        created=timestamp(record.created), reason=record.reason,
        spec=fleet_pb2.CreateRolloutRequest(
            artifact_sha256=record.artifact_sha256, selector=spec.selector, canary=spec.canary,
            waves_percent=spec.waves_percent, gate_fps_ratio=spec.gate_fps_ratio, max_failures=spec.max_failures,
            expect_different_detections=spec.expect_different_detections, select=spec.select,
            on_failure=ON_FAILURE_TO_PB[spec.on_failure],
        ),
        devices=[fleet_pb2.RolloutDevice(device_id=d.device_id, wave=max(d.wave, 0), state=deploy_state_to_pb(d.state),
                                         reason=d.reason) for d in record.devices],
    )
    for index in range(record.waves):
        succeeded, failed = wave_counts(record, index)
        rollout.waves.append(fleet_pb2.Wave(index=index, target=len(record.in_wave(index)), succeeded=succeeded,
                                            failed=failed, state=rollout_state_to_pb(wave_state(record, index))))
    return rollout


def deploy_command(rollout: RolloutRecord, artifact: ArtifactRecord) -> Command:
    spec = rollout.spec
    return Command("deploy", to_dict(agent_pb2.DeployArtifact(
        rollout_id=rollout.rollout_id, artifact=artifact_to_pb(artifact), gate_fps_ratio=spec.gate_fps_ratio,
        gate_min_agreement=spec.gate_min_agreement, gate_window_s=spec.gate_window_s,
        expect_different_detections=spec.expect_different_detections,
    )))


def status_report(pb: types_pb2.DeploymentStatus) -> StatusReport:
    if pb.state not in DeployState._value2member_map_ or pb.state == DeployState.WAITING:
        raise InvalidArgument(f"deployment.state {pb.state} is not a DeploymentStatus.State a device reports")
    if not pb.rollout_id:
        raise InvalidArgument("deployment.rollout_id is empty")
    return StatusReport(pb.rollout_id, pb.artifact_sha256, DeployState(pb.state), pb.progress, pb.reason,
                        dict(pb.gate_metrics))


def time_field(request: Message, name: str) -> float | None:
    """A request's Timestamp field `name` in seconds; None when unset; InvalidArgument out of range."""
    if not request.HasField(name):
        return None
    value = getattr(request, name)
    if not -62135596800 <= value.seconds <= 253402300799 or not 0 <= value.nanos < 10**9:  # 0001..9999 UTC
        raise InvalidArgument(f"{name} is not a valid time (seconds {value.seconds}, nanos {value.nanos})")
    return value.seconds + value.nanos / 1e9
