"""What the TUI shows, as plain frozen dataclasses. Protobuf stops in `tui.convert`.

A value the controller does not report (yet) is None, never a made-up zero, so the
screens can print "—" for it.
"""
from __future__ import annotations

from dataclasses import dataclass

STATUSES = ("online", "stale", "offline")


@dataclass(frozen=True)
class Plan:
    """What a device runs (or is pinned to): model, precision, input size, pacing, backend."""

    model: str = ""
    artifact_sha256: str = ""
    backend: str = ""
    precision: str = ""
    input_width: int = 0
    input_height: int = 0
    detect_interval: int = 0
    latency_budget_ms: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class PlanOverride:
    """An operator's pin or bounds on a device's plan (`SetPlan` on the wire)."""

    pinned: Plan | None = None
    max_input_size: int = 0
    min_detect_interval: int = 0
    max_detect_interval: int = 0


@dataclass(frozen=True)
class Health:
    """One health sample. `time` is the device's sample time, or when the controller got it."""

    time: float | None
    fps: float = 0.0
    detect_fps: float = 0.0
    inference_ms_p50: float = 0.0
    inference_ms_p95: float = 0.0
    latency_ms_p95: float = 0.0
    temperature_c: float | None = None  # 0 on the wire means unknown
    outbox_depth: int = 0
    frames_total: int = 0
    frames_dropped: int = 0
    detections_total: int = 0
    cpu_percent: float = 0.0


@dataclass(frozen=True)
class DeviceView:
    device_id: str
    hostname: str = ""
    status: str = "offline"  # one of STATUSES
    last_seen: float | None = None
    enrolled: float | None = None
    agent_version: str = ""
    platform: str = ""
    machine: str = ""
    accelerators: tuple[str, ...] = ()
    gpu_name: str = ""
    plan: Plan | None = None
    override: PlanOverride | None = None
    health: Health | None = None
    streams: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    """The device's own labels overlaid by the operator's: what selectors match."""
    operator_labels: tuple[str, ...] = ()
    """The keys of `labels` an operator set (edgefleet device label); they win over the device's own."""
    connected: bool = False
    detections_stored: int = 0
    acked_sequence: int = 0
    config_drift: str = ""
    """Desired vs applied configuration (`v3 applied, in sync`, `v2 applied, v3 desired`); "" when none is set."""


@dataclass(frozen=True)
class EventEntry:
    """One line of the event log. `kind`: fleet (the controller's words), rollout, connection."""

    time: float
    kind: str
    text: str
    device_id: str = ""


@dataclass(frozen=True)
class WaveView:
    """One wave of a rollout; index 0 is the canary."""

    index: int
    target: int
    succeeded: int
    failed: int
    state: str

    @property
    def name(self) -> str:
        """`canary`, `wave 2`, `wave 3`: numbered from 1 like the controller's messages."""
        return "canary" if self.index == 0 else f"wave {self.index + 1}"


SKIPPED = "skipped"
"""The state a rollout device reads as when the controller skipped it as incompatible."""


@dataclass(frozen=True)
class RolloutDeviceView:
    """Where one device stands in a rollout. `state` is a DeploymentStatus state in lower case
    ("pending" before it reported, "active", "failed", "rolled_back", ...) or "skipped"."""

    device_id: str
    wave: int
    state: str = "pending"
    reason: str = ""

    @property
    def skipped(self) -> bool:
        return self.state == SKIPPED


@dataclass(frozen=True)
class RolloutSpecView:
    """What a rollout was asked to do (its CreateRolloutRequest, with the controller's defaults)."""

    selector: tuple[tuple[str, str], ...] = ()
    canary: int = 0
    waves_percent: tuple[int, ...] = ()
    gate_fps_ratio: float = 0.0
    max_failures: int = 0


@dataclass(frozen=True)
class RolloutView:
    rollout_id: str
    artifact_sha256: str = ""
    state: str = "pending"
    waves: tuple[WaveView, ...] = ()
    devices: tuple[RolloutDeviceView, ...] = ()
    created: float | None = None
    reason: str = ""
    spec: RolloutSpecView | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed", "aborted")

    @property
    def targets(self) -> int:
        """Devices the rollout deploys to (the skipped ones not counted)."""
        return sum(1 for d in self.devices if not d.skipped)


@dataclass(frozen=True)
class RolloutRequest:
    """A rollout to create: what `tui.rollout_form` makes of the create dialog's fields."""

    artifact_sha256: str
    selector: tuple[tuple[str, str], ...] = ()
    canary: int = 1
    waves_percent: tuple[int, ...] = (100,)
    gate_fps_ratio: float = 0.9
    max_failures: int = 0


@dataclass(frozen=True)
class ArtifactView:
    """A model artifact the controller stores (its manifest)."""

    sha256: str
    name: str = ""
    format: str = ""
    size_bytes: int = 0
    precision: str = ""
    input_width: int = 0
    input_height: int = 0
    created: float | None = None


@dataclass(frozen=True)
class EngineChange:
    """A device began running another engine (model, backend, artifact), as first seen by the TUI.
    `reason` is the plan's ("rollout ro-1a2b3c4d", "cpu default"); `time` the device's last_seen then."""

    time: float | None
    model: str
    backend: str
    artifact_sha256: str
    reason: str = ""

    @property
    def label(self) -> str:
        """`yolov8n-coco tensorrt 9f2c4e1a`."""
        return " ".join(p for p in (self.model or "?", self.backend, self.artifact_sha256[:8]) if p)


@dataclass(frozen=True)
class ObjectView:
    track_id: int
    label: str
    score: float
    predicted: bool = False


@dataclass(frozen=True)
class FrameView:
    device_id: str
    stream_id: str
    sequence: int
    frame_index: int
    capture_time: float | None
    objects: tuple[ObjectView, ...] = ()
    dropped: int = 0  # frames the controller dropped for this watcher so far


@dataclass(frozen=True)
class Connection:
    """Where the fleet feed stands. `retry_at` is a `time.time()` when `state` is "lost"."""

    state: str  # "connecting", "connected", "lost", "refused" (the app exits with `error`)
    address: str
    error: str = ""
    attempt: int = 0
    retry_at: float | None = None


@dataclass(frozen=True)
class Removed:
    """The controller removed a device."""

    device_id: str


@dataclass(frozen=True)
class Dropped:
    """The controller dropped events for this watcher because it read too slowly (a running total)."""

    total: int


FleetItem = DeviceView | EventEntry | RolloutView | Removed | Dropped



# ---- objects, counts, pictures ----

@dataclass(frozen=True)
class PictureView:
    """A JPEG from the controller: a stream's latest frame ("live", GetFrame) or an object's "crop"/"frame"."""

    device_id: str
    stream_id: str
    kind: str
    jpeg: bytes
    time: float | None = None
    object_id: str = ""
    label: str = ""
    score: float = 0.0


@dataclass(frozen=True)
class TrackedObjectView:
    """One tracked object (ListObjects), as the device screen's objects list shows it."""

    object_id: str
    device_id: str
    stream_id: str
    track_id: int
    label: str
    first_seen: float | None
    last_seen: float | None
    best_score: float
    zones: tuple[str, ...] = ()
    crossings: tuple[tuple[str, str], ...] = ()  # (line, direction)
    ended: bool = False
    has_snapshot: bool = False


@dataclass(frozen=True)
class CountView:
    """One CountObjects bucket; `stream_id`/`group` are set when the request grouped by them."""

    kind: str
    name: str
    label: str
    direction: str
    count: int
    stream_id: str = ""
    group: str = ""
    device_id: str = ""


@dataclass(frozen=True)
class CountsView:
    buckets: tuple[CountView, ...]
    total: int
