import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Box(_message.Message):
    __slots__ = ("x1", "y1", "x2", "y2")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    x1: float
    y1: float
    x2: float
    y2: float
    def __init__(self, x1: _Optional[float] = ..., y1: _Optional[float] = ..., x2: _Optional[float] = ..., y2: _Optional[float] = ...) -> None: ...

class Detection(_message.Message):
    __slots__ = ("track_id", "class_id", "label", "score", "box", "predicted")
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_FIELD_NUMBER: _ClassVar[int]
    track_id: int
    class_id: int
    label: str
    score: float
    box: Box
    predicted: bool
    def __init__(self, track_id: _Optional[int] = ..., class_id: _Optional[int] = ..., label: _Optional[str] = ..., score: _Optional[float] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., predicted: _Optional[bool] = ...) -> None: ...

class FrameDetections(_message.Message):
    __slots__ = ("stream_id", "sequence", "frame_index", "capture_time", "detections", "device_id")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    sequence: int
    frame_index: int
    capture_time: _timestamp_pb2.Timestamp
    detections: _containers.RepeatedCompositeFieldContainer[Detection]
    device_id: str
    def __init__(self, stream_id: _Optional[str] = ..., sequence: _Optional[int] = ..., frame_index: _Optional[int] = ..., capture_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ..., device_id: _Optional[str] = ...) -> None: ...

class RuntimePlan(_message.Message):
    __slots__ = ("model", "artifact_sha256", "backend", "precision", "input_width", "input_height", "batch", "detect_interval", "latency_budget_ms", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    DETECT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    artifact_sha256: str
    backend: str
    precision: str
    input_width: int
    input_height: int
    batch: int
    detect_interval: int
    latency_budget_ms: float
    reason: str
    def __init__(self, model: _Optional[str] = ..., artifact_sha256: _Optional[str] = ..., backend: _Optional[str] = ..., precision: _Optional[str] = ..., input_width: _Optional[int] = ..., input_height: _Optional[int] = ..., batch: _Optional[int] = ..., detect_interval: _Optional[int] = ..., latency_budget_ms: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class HardwareProfile(_message.Message):
    __slots__ = ("platform", "machine", "cpu_model", "cpu_cores", "memory_bytes", "gpu_name", "gpu_compute_capability", "cuda_version", "tensorrt_version", "jetpack_version", "onnxruntime_providers", "accelerators", "extra")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    CPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPU_NAME_FIELD_NUMBER: _ClassVar[int]
    GPU_COMPUTE_CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    CUDA_VERSION_FIELD_NUMBER: _ClassVar[int]
    TENSORRT_VERSION_FIELD_NUMBER: _ClassVar[int]
    JETPACK_VERSION_FIELD_NUMBER: _ClassVar[int]
    ONNXRUNTIME_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    ACCELERATORS_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    platform: str
    machine: str
    cpu_model: str
    cpu_cores: int
    memory_bytes: int
    gpu_name: str
    gpu_compute_capability: str
    cuda_version: str
    tensorrt_version: str
    jetpack_version: str
    onnxruntime_providers: _containers.RepeatedScalarFieldContainer[str]
    accelerators: _containers.RepeatedScalarFieldContainer[str]
    extra: _containers.ScalarMap[str, str]
    def __init__(self, platform: _Optional[str] = ..., machine: _Optional[str] = ..., cpu_model: _Optional[str] = ..., cpu_cores: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., gpu_name: _Optional[str] = ..., gpu_compute_capability: _Optional[str] = ..., cuda_version: _Optional[str] = ..., tensorrt_version: _Optional[str] = ..., jetpack_version: _Optional[str] = ..., onnxruntime_providers: _Optional[_Iterable[str]] = ..., accelerators: _Optional[_Iterable[str]] = ..., extra: _Optional[_Mapping[str, str]] = ...) -> None: ...

class HealthSample(_message.Message):
    __slots__ = ("time", "fps", "detect_fps", "inference_ms_p50", "inference_ms_p95", "latency_ms_p95", "frames_dropped", "outbox_depth", "cpu_percent", "temperature_c", "frames_total", "detections_total", "streams", "outbox_dropped")
    TIME_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    DETECT_FPS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_P50_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_P95_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_P95_FIELD_NUMBER: _ClassVar[int]
    FRAMES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    FRAMES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_DROPPED_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    fps: float
    detect_fps: float
    inference_ms_p50: float
    inference_ms_p95: float
    latency_ms_p95: float
    frames_dropped: int
    outbox_depth: int
    cpu_percent: float
    temperature_c: float
    frames_total: int
    detections_total: int
    streams: _containers.RepeatedCompositeFieldContainer[StreamHealth]
    outbox_dropped: int
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., fps: _Optional[float] = ..., detect_fps: _Optional[float] = ..., inference_ms_p50: _Optional[float] = ..., inference_ms_p95: _Optional[float] = ..., latency_ms_p95: _Optional[float] = ..., frames_dropped: _Optional[int] = ..., outbox_depth: _Optional[int] = ..., cpu_percent: _Optional[float] = ..., temperature_c: _Optional[float] = ..., frames_total: _Optional[int] = ..., detections_total: _Optional[int] = ..., streams: _Optional[_Iterable[_Union[StreamHealth, _Mapping]]] = ..., outbox_dropped: _Optional[int] = ...) -> None: ...

class StreamHealth(_message.Message):
    __slots__ = ("stream_id", "source", "state", "fps", "frames", "dropped", "error")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    source: str
    state: str
    fps: float
    frames: int
    dropped: int
    error: str
    def __init__(self, stream_id: _Optional[str] = ..., source: _Optional[str] = ..., state: _Optional[str] = ..., fps: _Optional[float] = ..., frames: _Optional[int] = ..., dropped: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class ArtifactManifest(_message.Message):
    __slots__ = ("sha256", "size_bytes", "name", "format", "precision", "input_width", "input_height", "class_names", "tensorrt_version", "gpu_compute_capability", "created", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    TENSORRT_VERSION_FIELD_NUMBER: _ClassVar[int]
    GPU_COMPUTE_CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size_bytes: int
    name: str
    format: str
    precision: str
    input_width: int
    input_height: int
    class_names: _containers.RepeatedScalarFieldContainer[str]
    tensorrt_version: str
    gpu_compute_capability: str
    created: _timestamp_pb2.Timestamp
    labels: _containers.ScalarMap[str, str]
    def __init__(self, sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., name: _Optional[str] = ..., format: _Optional[str] = ..., precision: _Optional[str] = ..., input_width: _Optional[int] = ..., input_height: _Optional[int] = ..., class_names: _Optional[_Iterable[str]] = ..., tensorrt_version: _Optional[str] = ..., gpu_compute_capability: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("manifest", "signature")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    manifest: ArtifactManifest
    signature: bytes
    def __init__(self, manifest: _Optional[_Union[ArtifactManifest, _Mapping]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SetPlan(_message.Message):
    __slots__ = ("pinned", "max_input_size", "min_detect_interval", "max_detect_interval", "clear")
    PINNED_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    MIN_DETECT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    MAX_DETECT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    CLEAR_FIELD_NUMBER: _ClassVar[int]
    pinned: RuntimePlan
    max_input_size: int
    min_detect_interval: int
    max_detect_interval: int
    clear: bool
    def __init__(self, pinned: _Optional[_Union[RuntimePlan, _Mapping]] = ..., max_input_size: _Optional[int] = ..., min_detect_interval: _Optional[int] = ..., max_detect_interval: _Optional[int] = ..., clear: _Optional[bool] = ...) -> None: ...

class DeploymentStatus(_message.Message):
    __slots__ = ("rollout_id", "artifact_sha256", "state", "progress", "reason", "gate_metrics")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[DeploymentStatus.State]
        DOWNLOADING: _ClassVar[DeploymentStatus.State]
        VERIFYING: _ClassVar[DeploymentStatus.State]
        BUILDING: _ClassVar[DeploymentStatus.State]
        WARMING_UP: _ClassVar[DeploymentStatus.State]
        SHADOW_TESTING: _ClassVar[DeploymentStatus.State]
        ACTIVE: _ClassVar[DeploymentStatus.State]
        FAILED: _ClassVar[DeploymentStatus.State]
        ROLLED_BACK: _ClassVar[DeploymentStatus.State]
    STATE_UNSPECIFIED: DeploymentStatus.State
    DOWNLOADING: DeploymentStatus.State
    VERIFYING: DeploymentStatus.State
    BUILDING: DeploymentStatus.State
    WARMING_UP: DeploymentStatus.State
    SHADOW_TESTING: DeploymentStatus.State
    ACTIVE: DeploymentStatus.State
    FAILED: DeploymentStatus.State
    ROLLED_BACK: DeploymentStatus.State
    class GateMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    GATE_METRICS_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    artifact_sha256: str
    state: DeploymentStatus.State
    progress: float
    reason: str
    gate_metrics: _containers.ScalarMap[str, float]
    def __init__(self, rollout_id: _Optional[str] = ..., artifact_sha256: _Optional[str] = ..., state: _Optional[_Union[DeploymentStatus.State, str]] = ..., progress: _Optional[float] = ..., reason: _Optional[str] = ..., gate_metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class PathPoint(_message.Message):
    __slots__ = ("x", "y", "time")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    time: _timestamp_pb2.Timestamp
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ObjectCrossing(_message.Message):
    __slots__ = ("line", "direction", "time")
    LINE_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    line: str
    direction: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, line: _Optional[str] = ..., direction: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TrackedObject(_message.Message):
    __slots__ = ("object_id", "device_id", "stream_id", "track_id", "label", "class_id", "first_seen", "last_seen", "best_score", "best_box", "path", "zones", "crossings", "frames", "ended", "has_snapshot")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    BEST_SCORE_FIELD_NUMBER: _ClassVar[int]
    BEST_BOX_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ZONES_FIELD_NUMBER: _ClassVar[int]
    CROSSINGS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    HAS_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    object_id: str
    device_id: str
    stream_id: str
    track_id: int
    label: str
    class_id: int
    first_seen: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    best_score: float
    best_box: Box
    path: _containers.RepeatedCompositeFieldContainer[PathPoint]
    zones: _containers.RepeatedScalarFieldContainer[str]
    crossings: _containers.RepeatedCompositeFieldContainer[ObjectCrossing]
    frames: int
    ended: bool
    has_snapshot: bool
    def __init__(self, object_id: _Optional[str] = ..., device_id: _Optional[str] = ..., stream_id: _Optional[str] = ..., track_id: _Optional[int] = ..., label: _Optional[str] = ..., class_id: _Optional[int] = ..., first_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., best_score: _Optional[float] = ..., best_box: _Optional[_Union[Box, _Mapping]] = ..., path: _Optional[_Iterable[_Union[PathPoint, _Mapping]]] = ..., zones: _Optional[_Iterable[str]] = ..., crossings: _Optional[_Iterable[_Union[ObjectCrossing, _Mapping]]] = ..., frames: _Optional[int] = ..., ended: _Optional[bool] = ..., has_snapshot: _Optional[bool] = ...) -> None: ...

class CountRow(_message.Message):
    __slots__ = ("stream_id", "minute", "kind", "name", "label", "direction", "count")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    MINUTE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    minute: int
    kind: str
    name: str
    label: str
    direction: str
    count: int
    def __init__(self, stream_id: _Optional[str] = ..., minute: _Optional[int] = ..., kind: _Optional[str] = ..., name: _Optional[str] = ..., label: _Optional[str] = ..., direction: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("device_id", "stream_id", "object_id", "kind", "label", "time", "jpeg", "sha256", "score")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    JPEG_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    stream_id: str
    object_id: str
    kind: str
    label: str
    time: _timestamp_pb2.Timestamp
    jpeg: bytes
    sha256: str
    score: float
    def __init__(self, device_id: _Optional[str] = ..., stream_id: _Optional[str] = ..., object_id: _Optional[str] = ..., kind: _Optional[str] = ..., label: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., jpeg: _Optional[bytes] = ..., sha256: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...
