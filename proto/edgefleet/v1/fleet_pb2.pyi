import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from edgefleet.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeviceStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_STATUS_UNSPECIFIED: _ClassVar[DeviceStatus]
    ONLINE: _ClassVar[DeviceStatus]
    STALE: _ClassVar[DeviceStatus]
    OFFLINE: _ClassVar[DeviceStatus]

class CommandState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMMAND_STATE_UNSPECIFIED: _ClassVar[CommandState]
    DONE: _ClassVar[CommandState]
    REFUSED: _ClassVar[CommandState]
    TIMED_OUT: _ClassVar[CommandState]
    NOT_CONNECTED: _ClassVar[CommandState]

class RolloutState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLLOUT_STATE_UNSPECIFIED: _ClassVar[RolloutState]
    PENDING: _ClassVar[RolloutState]
    RUNNING: _ClassVar[RolloutState]
    PAUSED: _ClassVar[RolloutState]
    SUCCEEDED: _ClassVar[RolloutState]
    FAILED: _ClassVar[RolloutState]
    ABORTED: _ClassVar[RolloutState]

class OnFailure(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ON_FAILURE_UNSPECIFIED: _ClassVar[OnFailure]
    ROLLBACK: _ClassVar[OnFailure]
    HALT: _ClassVar[OnFailure]
DEVICE_STATUS_UNSPECIFIED: DeviceStatus
ONLINE: DeviceStatus
STALE: DeviceStatus
OFFLINE: DeviceStatus
COMMAND_STATE_UNSPECIFIED: CommandState
DONE: CommandState
REFUSED: CommandState
TIMED_OUT: CommandState
NOT_CONNECTED: CommandState
ROLLOUT_STATE_UNSPECIFIED: RolloutState
PENDING: RolloutState
RUNNING: RolloutState
PAUSED: RolloutState
SUCCEEDED: RolloutState
FAILED: RolloutState
ABORTED: RolloutState
ON_FAILURE_UNSPECIFIED: OnFailure
ROLLBACK: OnFailure
HALT: OnFailure

class Device(_message.Message):
    __slots__ = ("device_id", "hostname", "status", "enrolled", "last_seen", "agent_version", "profile", "plan", "health", "acked_sequence", "detections_stored", "streams", "labels", "plan_override", "connected", "reported_labels", "operator_labels", "revoked", "config")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ReportedLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class OperatorLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_STORED_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PLAN_OVERRIDE_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    REPORTED_LABELS_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_LABELS_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    hostname: str
    status: DeviceStatus
    enrolled: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    agent_version: str
    profile: _types_pb2.HardwareProfile
    plan: _types_pb2.RuntimePlan
    health: _types_pb2.HealthSample
    acked_sequence: int
    detections_stored: int
    streams: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    plan_override: _types_pb2.SetPlan
    connected: bool
    reported_labels: _containers.ScalarMap[str, str]
    operator_labels: _containers.ScalarMap[str, str]
    revoked: bool
    config: DeviceConfig
    def __init__(self, device_id: _Optional[str] = ..., hostname: _Optional[str] = ..., status: _Optional[_Union[DeviceStatus, str]] = ..., enrolled: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., agent_version: _Optional[str] = ..., profile: _Optional[_Union[_types_pb2.HardwareProfile, _Mapping]] = ..., plan: _Optional[_Union[_types_pb2.RuntimePlan, _Mapping]] = ..., health: _Optional[_Union[_types_pb2.HealthSample, _Mapping]] = ..., acked_sequence: _Optional[int] = ..., detections_stored: _Optional[int] = ..., streams: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., plan_override: _Optional[_Union[_types_pb2.SetPlan, _Mapping]] = ..., connected: _Optional[bool] = ..., reported_labels: _Optional[_Mapping[str, str]] = ..., operator_labels: _Optional[_Mapping[str, str]] = ..., revoked: _Optional[bool] = ..., config: _Optional[_Union[DeviceConfig, _Mapping]] = ...) -> None: ...

class DeviceConfig(_message.Message):
    __slots__ = ("device_id", "desired_version", "desired_document", "desired_from", "applied_version", "applied_document", "refused_version", "errors", "in_sync", "how")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    DESIRED_VERSION_FIELD_NUMBER: _ClassVar[int]
    DESIRED_DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    DESIRED_FROM_FIELD_NUMBER: _ClassVar[int]
    APPLIED_VERSION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    REFUSED_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    IN_SYNC_FIELD_NUMBER: _ClassVar[int]
    HOW_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    desired_version: int
    desired_document: str
    desired_from: str
    applied_version: int
    applied_document: str
    refused_version: int
    errors: _containers.RepeatedScalarFieldContainer[str]
    in_sync: bool
    how: str
    def __init__(self, device_id: _Optional[str] = ..., desired_version: _Optional[int] = ..., desired_document: _Optional[str] = ..., desired_from: _Optional[str] = ..., applied_version: _Optional[int] = ..., applied_document: _Optional[str] = ..., refused_version: _Optional[int] = ..., errors: _Optional[_Iterable[str]] = ..., in_sync: _Optional[bool] = ..., how: _Optional[str] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ("status", "selector", "select")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    SELECT_FIELD_NUMBER: _ClassVar[int]
    status: DeviceStatus
    selector: _containers.ScalarMap[str, str]
    select: str
    def __init__(self, status: _Optional[_Union[DeviceStatus, str]] = ..., selector: _Optional[_Mapping[str, str]] = ..., select: _Optional[str] = ...) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    def __init__(self, devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ...) -> None: ...

class GetDeviceRequest(_message.Message):
    __slots__ = ("device_id",)
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    def __init__(self, device_id: _Optional[str] = ...) -> None: ...

class WatchFleetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FleetEvent(_message.Message):
    __slots__ = ("time", "device", "removed_device_id", "rollout", "message", "dropped")
    TIME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    REMOVED_DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    device: Device
    removed_device_id: str
    rollout: Rollout
    message: str
    dropped: int
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., device: _Optional[_Union[Device, _Mapping]] = ..., removed_device_id: _Optional[str] = ..., rollout: _Optional[_Union[Rollout, _Mapping]] = ..., message: _Optional[str] = ..., dropped: _Optional[int] = ...) -> None: ...

class SetPlanOverrideRequest(_message.Message):
    __slots__ = ("device_id", "plan")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    plan: _types_pb2.SetPlan
    def __init__(self, device_id: _Optional[str] = ..., plan: _Optional[_Union[_types_pb2.SetPlan, _Mapping]] = ...) -> None: ...

class SendCommandRequest(_message.Message):
    __slots__ = ("device_id", "select", "restart_reason", "rollback_reason", "ping", "timeout_ms")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SELECT_FIELD_NUMBER: _ClassVar[int]
    RESTART_REASON_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    select: str
    restart_reason: str
    rollback_reason: str
    ping: bool
    timeout_ms: int
    def __init__(self, device_id: _Optional[str] = ..., select: _Optional[str] = ..., restart_reason: _Optional[str] = ..., rollback_reason: _Optional[str] = ..., ping: _Optional[bool] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class CommandOutcome(_message.Message):
    __slots__ = ("device_id", "command_id", "state", "error", "detail", "round_trip_ms")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ROUND_TRIP_MS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    command_id: str
    state: CommandState
    error: str
    detail: str
    round_trip_ms: float
    def __init__(self, device_id: _Optional[str] = ..., command_id: _Optional[str] = ..., state: _Optional[_Union[CommandState, str]] = ..., error: _Optional[str] = ..., detail: _Optional[str] = ..., round_trip_ms: _Optional[float] = ...) -> None: ...

class SendCommandResponse(_message.Message):
    __slots__ = ("command_id", "outcomes")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    outcomes: _containers.RepeatedCompositeFieldContainer[CommandOutcome]
    def __init__(self, command_id: _Optional[str] = ..., outcomes: _Optional[_Iterable[_Union[CommandOutcome, _Mapping]]] = ...) -> None: ...

class SetDeviceLabelsRequest(_message.Message):
    __slots__ = ("device_id", "set", "remove")
    class SetEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    set: _containers.ScalarMap[str, str]
    remove: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, device_id: _Optional[str] = ..., set: _Optional[_Mapping[str, str]] = ..., remove: _Optional[_Iterable[str]] = ...) -> None: ...

class SetDesiredConfigRequest(_message.Message):
    __slots__ = ("device_id", "select", "document", "clear", "timeout_ms")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SELECT_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    CLEAR_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    select: str
    document: str
    clear: bool
    timeout_ms: int
    def __init__(self, device_id: _Optional[str] = ..., select: _Optional[str] = ..., document: _Optional[str] = ..., clear: _Optional[bool] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class SetDesiredConfigResponse(_message.Message):
    __slots__ = ("configs", "outcomes")
    CONFIGS_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    configs: _containers.RepeatedCompositeFieldContainer[DeviceConfig]
    outcomes: _containers.RepeatedCompositeFieldContainer[CommandOutcome]
    def __init__(self, configs: _Optional[_Iterable[_Union[DeviceConfig, _Mapping]]] = ..., outcomes: _Optional[_Iterable[_Union[CommandOutcome, _Mapping]]] = ...) -> None: ...

class RevokeDeviceRequest(_message.Message):
    __slots__ = ("device_id", "reason")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    reason: str
    def __init__(self, device_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RemoveDeviceRequest(_message.Message):
    __slots__ = ("device_id", "purge_data")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    PURGE_DATA_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    purge_data: bool
    def __init__(self, device_id: _Optional[str] = ..., purge_data: _Optional[bool] = ...) -> None: ...

class RemoveDeviceResponse(_message.Message):
    __slots__ = ("device_id", "detections_deleted")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_DELETED_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    detections_deleted: int
    def __init__(self, device_id: _Optional[str] = ..., detections_deleted: _Optional[int] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("id", "time", "token_id", "token_name", "role", "call", "target", "parameters", "ok", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: int
    time: _timestamp_pb2.Timestamp
    token_id: str
    token_name: str
    role: str
    call: str
    target: str
    parameters: str
    ok: bool
    error: str
    def __init__(self, id: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., token_id: _Optional[str] = ..., token_name: _Optional[str] = ..., role: _Optional[str] = ..., call: _Optional[str] = ..., target: _Optional[str] = ..., parameters: _Optional[str] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("since", "limit")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    since: _timestamp_pb2.Timestamp
    limit: int
    def __init__(self, since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limit: _Optional[int] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("entries", "omitted")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    OMITTED_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    omitted: int
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ..., omitted: _Optional[int] = ...) -> None: ...

class ListDetectionsRequest(_message.Message):
    __slots__ = ("device_id", "stream_id", "after_sequence", "limit", "since", "until", "select", "labels")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    SELECT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    stream_id: str
    after_sequence: int
    limit: int
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    select: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, device_id: _Optional[str] = ..., stream_id: _Optional[str] = ..., after_sequence: _Optional[int] = ..., limit: _Optional[int] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., select: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class ListDetectionsResponse(_message.Message):
    __slots__ = ("frames", "total", "omitted")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    OMITTED_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[_types_pb2.FrameDetections]
    total: int
    omitted: int
    def __init__(self, frames: _Optional[_Iterable[_Union[_types_pb2.FrameDetections, _Mapping]]] = ..., total: _Optional[int] = ..., omitted: _Optional[int] = ...) -> None: ...

class WatchDetectionsRequest(_message.Message):
    __slots__ = ("device_id", "stream_id", "labels", "min_score", "select")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    SELECT_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    stream_id: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    min_score: float
    select: str
    def __init__(self, device_id: _Optional[str] = ..., stream_id: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., min_score: _Optional[float] = ..., select: _Optional[str] = ...) -> None: ...

class WatchDetectionsResponse(_message.Message):
    __slots__ = ("frame", "dropped")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    frame: _types_pb2.FrameDetections
    dropped: int
    def __init__(self, frame: _Optional[_Union[_types_pb2.FrameDetections, _Mapping]] = ..., dropped: _Optional[int] = ...) -> None: ...

class ListObjectsRequest(_message.Message):
    __slots__ = ("device_id", "select", "stream_id", "label", "zone", "line", "since", "until", "limit", "page_token", "active")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SELECT_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    select: str
    stream_id: str
    label: str
    zone: str
    line: str
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    limit: int
    page_token: str
    active: bool
    def __init__(self, device_id: _Optional[str] = ..., select: _Optional[str] = ..., stream_id: _Optional[str] = ..., label: _Optional[str] = ..., zone: _Optional[str] = ..., line: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ..., active: _Optional[bool] = ...) -> None: ...

class ListObjectsResponse(_message.Message):
    __slots__ = ("objects", "next_page_token")
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[_types_pb2.TrackedObject]
    next_page_token: str
    def __init__(self, objects: _Optional[_Iterable[_Union[_types_pb2.TrackedObject, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CountObjectsRequest(_message.Message):
    __slots__ = ("device_id", "select", "stream_id", "kind", "name", "label", "direction", "since", "until", "bucket", "group_by")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SELECT_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    select: str
    stream_id: str
    kind: str
    name: str
    label: str
    direction: str
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    bucket: str
    group_by: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, device_id: _Optional[str] = ..., select: _Optional[str] = ..., stream_id: _Optional[str] = ..., kind: _Optional[str] = ..., name: _Optional[str] = ..., label: _Optional[str] = ..., direction: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., bucket: _Optional[str] = ..., group_by: _Optional[_Iterable[str]] = ...) -> None: ...

class CountBucket(_message.Message):
    __slots__ = ("start", "device_id", "stream_id", "group", "kind", "name", "label", "direction", "count")
    START_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    start: _timestamp_pb2.Timestamp
    device_id: str
    stream_id: str
    group: str
    kind: str
    name: str
    label: str
    direction: str
    count: int
    def __init__(self, start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., device_id: _Optional[str] = ..., stream_id: _Optional[str] = ..., group: _Optional[str] = ..., kind: _Optional[str] = ..., name: _Optional[str] = ..., label: _Optional[str] = ..., direction: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class CountObjectsResponse(_message.Message):
    __slots__ = ("buckets", "total")
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    buckets: _containers.RepeatedCompositeFieldContainer[CountBucket]
    total: int
    def __init__(self, buckets: _Optional[_Iterable[_Union[CountBucket, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class GetSnapshotRequest(_message.Message):
    __slots__ = ("object_id", "kind", "device_id")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    object_id: str
    kind: str
    device_id: str
    def __init__(self, object_id: _Optional[str] = ..., kind: _Optional[str] = ..., device_id: _Optional[str] = ...) -> None: ...

class GetFrameRequest(_message.Message):
    __slots__ = ("device_id", "stream_id", "max_width", "timeout_ms")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_WIDTH_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    stream_id: str
    max_width: int
    timeout_ms: int
    def __init__(self, device_id: _Optional[str] = ..., stream_id: _Optional[str] = ..., max_width: _Optional[int] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class UploadArtifactRequest(_message.Message):
    __slots__ = ("manifest", "chunk")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    manifest: _types_pb2.ArtifactManifest
    chunk: bytes
    def __init__(self, manifest: _Optional[_Union[_types_pb2.ArtifactManifest, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class ListArtifactsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListArtifactsResponse(_message.Message):
    __slots__ = ("artifacts",)
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    artifacts: _containers.RepeatedCompositeFieldContainer[_types_pb2.Artifact]
    def __init__(self, artifacts: _Optional[_Iterable[_Union[_types_pb2.Artifact, _Mapping]]] = ...) -> None: ...

class CreateRolloutRequest(_message.Message):
    __slots__ = ("artifact_sha256", "selector", "canary", "waves_percent", "gate_fps_ratio", "max_failures", "expect_different_detections", "select", "on_failure")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    WAVES_PERCENT_FIELD_NUMBER: _ClassVar[int]
    GATE_FPS_RATIO_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILURES_FIELD_NUMBER: _ClassVar[int]
    EXPECT_DIFFERENT_DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    SELECT_FIELD_NUMBER: _ClassVar[int]
    ON_FAILURE_FIELD_NUMBER: _ClassVar[int]
    artifact_sha256: str
    selector: _containers.ScalarMap[str, str]
    canary: int
    waves_percent: _containers.RepeatedScalarFieldContainer[int]
    gate_fps_ratio: float
    max_failures: int
    expect_different_detections: bool
    select: str
    on_failure: OnFailure
    def __init__(self, artifact_sha256: _Optional[str] = ..., selector: _Optional[_Mapping[str, str]] = ..., canary: _Optional[int] = ..., waves_percent: _Optional[_Iterable[int]] = ..., gate_fps_ratio: _Optional[float] = ..., max_failures: _Optional[int] = ..., expect_different_detections: _Optional[bool] = ..., select: _Optional[str] = ..., on_failure: _Optional[_Union[OnFailure, str]] = ...) -> None: ...

class RolloutDevice(_message.Message):
    __slots__ = ("device_id", "wave", "state", "reason")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    WAVE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    wave: int
    state: _types_pb2.DeploymentStatus.State
    reason: str
    def __init__(self, device_id: _Optional[str] = ..., wave: _Optional[int] = ..., state: _Optional[_Union[_types_pb2.DeploymentStatus.State, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class Wave(_message.Message):
    __slots__ = ("index", "target", "succeeded", "failed", "state")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    index: int
    target: int
    succeeded: int
    failed: int
    state: RolloutState
    def __init__(self, index: _Optional[int] = ..., target: _Optional[int] = ..., succeeded: _Optional[int] = ..., failed: _Optional[int] = ..., state: _Optional[_Union[RolloutState, str]] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("rollout_id", "artifact_sha256", "state", "waves", "devices", "created", "reason", "spec")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WAVES_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    artifact_sha256: str
    state: RolloutState
    waves: _containers.RepeatedCompositeFieldContainer[Wave]
    devices: _containers.RepeatedCompositeFieldContainer[RolloutDevice]
    created: _timestamp_pb2.Timestamp
    reason: str
    spec: CreateRolloutRequest
    def __init__(self, rollout_id: _Optional[str] = ..., artifact_sha256: _Optional[str] = ..., state: _Optional[_Union[RolloutState, str]] = ..., waves: _Optional[_Iterable[_Union[Wave, _Mapping]]] = ..., devices: _Optional[_Iterable[_Union[RolloutDevice, _Mapping]]] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., spec: _Optional[_Union[CreateRolloutRequest, _Mapping]] = ...) -> None: ...

class GetRolloutRequest(_message.Message):
    __slots__ = ("rollout_id",)
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    def __init__(self, rollout_id: _Optional[str] = ...) -> None: ...

class ListRolloutsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRolloutsResponse(_message.Message):
    __slots__ = ("rollouts",)
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[Rollout]
    def __init__(self, rollouts: _Optional[_Iterable[_Union[Rollout, _Mapping]]] = ...) -> None: ...

class RolloutRef(_message.Message):
    __slots__ = ("rollout_id", "reason")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    reason: str
    def __init__(self, rollout_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
