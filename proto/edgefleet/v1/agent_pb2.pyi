import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from edgefleet.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnrollRequest(_message.Message):
    __slots__ = ("enroll_key", "hardware_id", "hostname", "agent_version", "profile", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENROLL_KEY_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    enroll_key: str
    hardware_id: str
    hostname: str
    agent_version: str
    profile: _types_pb2.HardwareProfile
    labels: _containers.ScalarMap[str, str]
    def __init__(self, enroll_key: _Optional[str] = ..., hardware_id: _Optional[str] = ..., hostname: _Optional[str] = ..., agent_version: _Optional[str] = ..., profile: _Optional[_Union[_types_pb2.HardwareProfile, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("device_id", "device_token", "controller_public_key", "heartbeat_interval_s")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    device_token: str
    controller_public_key: bytes
    heartbeat_interval_s: int
    def __init__(self, device_id: _Optional[str] = ..., device_token: _Optional[str] = ..., controller_public_key: _Optional[bytes] = ..., heartbeat_interval_s: _Optional[int] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "heartbeat", "deployment", "result", "config")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    heartbeat: Heartbeat
    deployment: _types_pb2.DeploymentStatus
    result: CommandResult
    config: ConfigStatus
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., deployment: _Optional[_Union[_types_pb2.DeploymentStatus, _Mapping]] = ..., result: _Optional[_Union[CommandResult, _Mapping]] = ..., config: _Optional[_Union[ConfigStatus, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("agent_version", "profile", "plan", "streams", "started", "labels", "config")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    agent_version: str
    profile: _types_pb2.HardwareProfile
    plan: _types_pb2.RuntimePlan
    streams: _containers.RepeatedScalarFieldContainer[str]
    started: _timestamp_pb2.Timestamp
    labels: _containers.ScalarMap[str, str]
    config: ConfigStatus
    def __init__(self, agent_version: _Optional[str] = ..., profile: _Optional[_Union[_types_pb2.HardwareProfile, _Mapping]] = ..., plan: _Optional[_Union[_types_pb2.RuntimePlan, _Mapping]] = ..., streams: _Optional[_Iterable[str]] = ..., started: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., config: _Optional[_Union[ConfigStatus, _Mapping]] = ...) -> None: ...

class ConfigStatus(_message.Message):
    __slots__ = ("applied_version", "refused_version", "errors", "applied_document", "how")
    APPLIED_VERSION_FIELD_NUMBER: _ClassVar[int]
    REFUSED_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    HOW_FIELD_NUMBER: _ClassVar[int]
    applied_version: int
    refused_version: int
    errors: _containers.RepeatedScalarFieldContainer[str]
    applied_document: str
    how: str
    def __init__(self, applied_version: _Optional[int] = ..., refused_version: _Optional[int] = ..., errors: _Optional[_Iterable[str]] = ..., applied_document: _Optional[str] = ..., how: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("seq", "health", "plan")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    seq: int
    health: _types_pb2.HealthSample
    plan: _types_pb2.RuntimePlan
    def __init__(self, seq: _Optional[int] = ..., health: _Optional[_Union[_types_pb2.HealthSample, _Mapping]] = ..., plan: _Optional[_Union[_types_pb2.RuntimePlan, _Mapping]] = ...) -> None: ...

class CommandResult(_message.Message):
    __slots__ = ("command_id", "ok", "error", "detail", "snapshot")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    ok: bool
    error: str
    detail: str
    snapshot: _types_pb2.Snapshot
    def __init__(self, command_id: _Optional[str] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ..., detail: _Optional[str] = ..., snapshot: _Optional[_Union[_types_pb2.Snapshot, _Mapping]] = ...) -> None: ...

class ControllerMessage(_message.Message):
    __slots__ = ("accepted", "command")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    accepted: SessionAccepted
    command: Command
    def __init__(self, accepted: _Optional[_Union[SessionAccepted, _Mapping]] = ..., command: _Optional[_Union[Command, _Mapping]] = ...) -> None: ...

class SessionAccepted(_message.Message):
    __slots__ = ("device_id", "heartbeat_interval_s", "acked_sequence")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    heartbeat_interval_s: int
    acked_sequence: int
    def __init__(self, device_id: _Optional[str] = ..., heartbeat_interval_s: _Optional[int] = ..., acked_sequence: _Optional[int] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("command_id", "deploy", "set_plan", "restart", "ping", "rollback", "apply_config", "cancel_deployment", "capture_frame")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOY_FIELD_NUMBER: _ClassVar[int]
    SET_PLAN_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    APPLY_CONFIG_FIELD_NUMBER: _ClassVar[int]
    CANCEL_DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_FRAME_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    deploy: DeployArtifact
    set_plan: _types_pb2.SetPlan
    restart: Restart
    ping: Ping
    rollback: Rollback
    apply_config: ApplyConfig
    cancel_deployment: CancelDeployment
    capture_frame: CaptureFrame
    def __init__(self, command_id: _Optional[str] = ..., deploy: _Optional[_Union[DeployArtifact, _Mapping]] = ..., set_plan: _Optional[_Union[_types_pb2.SetPlan, _Mapping]] = ..., restart: _Optional[_Union[Restart, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., rollback: _Optional[_Union[Rollback, _Mapping]] = ..., apply_config: _Optional[_Union[ApplyConfig, _Mapping]] = ..., cancel_deployment: _Optional[_Union[CancelDeployment, _Mapping]] = ..., capture_frame: _Optional[_Union[CaptureFrame, _Mapping]] = ...) -> None: ...

class CaptureFrame(_message.Message):
    __slots__ = ("stream_id", "max_width")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_WIDTH_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    max_width: int
    def __init__(self, stream_id: _Optional[str] = ..., max_width: _Optional[int] = ...) -> None: ...

class ApplyConfig(_message.Message):
    __slots__ = ("version", "document")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    version: int
    document: str
    def __init__(self, version: _Optional[int] = ..., document: _Optional[str] = ...) -> None: ...

class CancelDeployment(_message.Message):
    __slots__ = ("rollout_id", "reason")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    reason: str
    def __init__(self, rollout_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DeployArtifact(_message.Message):
    __slots__ = ("rollout_id", "artifact", "gate_fps_ratio", "gate_min_agreement", "gate_window_s", "expect_different_detections")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    GATE_FPS_RATIO_FIELD_NUMBER: _ClassVar[int]
    GATE_MIN_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    GATE_WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    EXPECT_DIFFERENT_DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    artifact: _types_pb2.Artifact
    gate_fps_ratio: float
    gate_min_agreement: float
    gate_window_s: int
    expect_different_detections: bool
    def __init__(self, rollout_id: _Optional[str] = ..., artifact: _Optional[_Union[_types_pb2.Artifact, _Mapping]] = ..., gate_fps_ratio: _Optional[float] = ..., gate_min_agreement: _Optional[float] = ..., gate_window_s: _Optional[int] = ..., expect_different_detections: _Optional[bool] = ...) -> None: ...

class Restart(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("sent",)
    SENT_FIELD_NUMBER: _ClassVar[int]
    sent: _timestamp_pb2.Timestamp
    def __init__(self, sent: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Rollback(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class DetectionBatch(_message.Message):
    __slots__ = ("frames", "objects", "counts", "snapshots")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[_types_pb2.FrameDetections]
    objects: _containers.RepeatedCompositeFieldContainer[ObjectEvent]
    counts: _containers.RepeatedCompositeFieldContainer[CountBatch]
    snapshots: _containers.RepeatedCompositeFieldContainer[SnapshotRecord]
    def __init__(self, frames: _Optional[_Iterable[_Union[_types_pb2.FrameDetections, _Mapping]]] = ..., objects: _Optional[_Iterable[_Union[ObjectEvent, _Mapping]]] = ..., counts: _Optional[_Iterable[_Union[CountBatch, _Mapping]]] = ..., snapshots: _Optional[_Iterable[_Union[SnapshotRecord, _Mapping]]] = ...) -> None: ...

class ObjectEvent(_message.Message):
    __slots__ = ("sequence", "type", "object")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    type: str
    object: _types_pb2.TrackedObject
    def __init__(self, sequence: _Optional[int] = ..., type: _Optional[str] = ..., object: _Optional[_Union[_types_pb2.TrackedObject, _Mapping]] = ...) -> None: ...

class CountBatch(_message.Message):
    __slots__ = ("sequence", "rows")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    rows: _containers.RepeatedCompositeFieldContainer[_types_pb2.CountRow]
    def __init__(self, sequence: _Optional[int] = ..., rows: _Optional[_Iterable[_Union[_types_pb2.CountRow, _Mapping]]] = ...) -> None: ...

class SnapshotRecord(_message.Message):
    __slots__ = ("sequence", "snapshot")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    snapshot: _types_pb2.Snapshot
    def __init__(self, sequence: _Optional[int] = ..., snapshot: _Optional[_Union[_types_pb2.Snapshot, _Mapping]] = ...) -> None: ...

class PublishAck(_message.Message):
    __slots__ = ("acked_sequence", "duplicates")
    ACKED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    acked_sequence: int
    duplicates: int
    def __init__(self, acked_sequence: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...

class FetchArtifactRequest(_message.Message):
    __slots__ = ("sha256", "offset", "chunk_size")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    offset: int
    chunk_size: int
    def __init__(self, sha256: _Optional[str] = ..., offset: _Optional[int] = ..., chunk_size: _Optional[int] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("offset", "data", "total_size")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_size: int
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ...) -> None: ...
