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
    connected: bool = False
    detections_stored: int = 0
    acked_sequence: int = 0


@dataclass(frozen=True)
class EventEntry:
    """One line of the event log. `kind`: fleet (the controller's words), rollout, connection."""

    time: float
    kind: str
    text: str
    device_id: str = ""


@dataclass(frozen=True)
class WaveView:
    index: int
    target: int
    succeeded: int
    failed: int
    state: str


@dataclass(frozen=True)
class RolloutView:
    rollout_id: str
    artifact_sha256: str = ""
    state: str = "pending"
    waves: tuple[WaveView, ...] = ()
    devices: int = 0
    created: float | None = None
    reason: str = ""

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed", "aborted")


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

    state: str  # "connecting", "connected", "lost"
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

