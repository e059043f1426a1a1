"""What `edge-agent run` tells the loop (`RunOptions`), and what `--auto-plan` adds (`Adaptation`)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from edgefleet.adaptive.controller import Rung, RuntimeController
from edgefleet.models.base import DEFAULT_CONFIDENCE_THRESHOLD, Detector

from .config import AgentConfig
from .errors import ConfigError
from .objects import ObjectSettings
from .snapshots import SnapshotSettings
from .zones import StreamAnalytics

CONTROL_EVERY_S = 1.0
"""How often the runtime controller gets a health reading (its timers assume about once a second)."""


@dataclass
class RunOptions:
    """What the loop and its supervisor run with: built from a validated AgentConfig
    (`from_config`), or directly by tests and embedders; the names are AgentConfig's, and so are
    the bounds (checked there, once)."""
    controller: str
    sources: list[str]
    state_dir: Path
    enroll_key: str | None = None
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    """The device's own labels (--label, agent.yaml labels:), sent at enrollment and in every Hello."""
    stream_ids: list[str] = field(default_factory=list)  # default cam0, cam1, ...
    max_frames: int = 0          # per stream; 0: until the source ends
    loop: bool = False           # restart a finite source at its end (demo)
    detect_interval: int = 1     # detect every Nth frame of a stream, track in between (at the start)
    motion_gate: float = 0       # >0: skip detection on static scenes (see adaptive.schedule)
    drain_timeout: float = 30.0
    backoff_max_s: float = 10.0
    outbox_max_mb: float = 512.0
    """Bound on the outbox's records (agent.outbox.Outbox); past it the oldest are dropped and counted. 0: none."""
    outbox_max_age_s: float = 7 * 24 * 3600.0
    """Records captured longer ago than this are dropped from the outbox, oldest first. 0: kept however old."""
    commit_interval_s: float = 0.25
    """Records are committed to the outbox (one transaction, one fsync) in groups about this often,
    on the outbox writer's thread (agent.outbox.OutboxWriter), and the link sends each group in
    one message. A frame counts as produced, and is sent, only once committed, so a crash loses at
    most the uncommitted group, which nobody has seen. Shorter: detections reach the controller and
    MQTT sooner. Longer: fewer fsyncs (each a millisecond or more, far more on SD cards), messages
    and acks on the device and fewer commits on the controller. 0: every tick."""
    credentials: grpc.ChannelCredentials | None = None  # TLS to the controller (link.channel_credentials)
    gate_sample_every: int = 5
    """During a deployment's shadow test, every Nth detected frame also goes to the candidate engine."""
    engine_confirm_s: float = 60.0
    """A swapped-in engine counts as healthy after this long running (agent.engines.ActiveEngines)."""
    download_mbps: float = 0.0   # cap on artifact downloads, megabytes per second; 0: none
    fallback_model: Path | None = None
    """The --model file: what a rollback to "the engine before any rollout" loads (None: the bundled one)."""
    publish_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD
    """Tracked rows scoring below this are kept out of the outbox. The detector runs with
    ByteTrack's low threshold so that faint boxes can keep a confirmed track alive through an
    occlusion (the second association); those rows are evidence for the tracker, not detections
    to store: a stored detection keeps meaning "scored at least 0.25", as before. 0 publishes
    every tracked row."""
    serving: bool = False
    restart_mode: str = "auto"
    """How a restart command restarts the agent: "in-process", "exit" (code 75, for systemd), or "auto"
    (exit under systemd, in process elsewhere); see `Agent.restart`."""
    """`edge-agent serve`: served streams (agent.inference) feed the agent too, so it may have no
    --source and runs until stopped, not until its sources end."""
    analytics: dict[str, StreamAnalytics] = field(default_factory=dict)
    """Per local stream id: its zones and lines (agent.yaml `analytics:`, agent.zones), evaluated by the loop."""
    objects: ObjectSettings = field(default_factory=ObjectSettings)
    """When a track is an object and when its events go out (agent.objects)."""
    snapshots: SnapshotSettings = field(default_factory=SnapshotSettings)
    """The ended objects' snapshots (agent.yaml `snapshots:`, agent.snapshots)."""

    def __post_init__(self) -> None:
        if not self.stream_ids:
            self.stream_ids = [f"cam{i}" for i in range(len(self.sources))]

    @property
    def outbox_max_bytes(self) -> int:
        return int(self.outbox_max_mb * 1e6)

    @classmethod
    def from_config(cls, config: AgentConfig, credentials: grpc.ChannelCredentials | None = None) -> RunOptions:
        """The options of a validated config (`credentials`: its TLS files, read by the caller)."""
        if config.controller is None:
            raise ConfigError("the agent needs --controller")
        return cls(
            controller=config.controller, sources=list(config.source or []), state_dir=config.state_dir,
            enroll_key=config.enroll_key, name=config.name or "", labels=dict(config.labels),
            stream_ids=config.stream_ids,
            max_frames=config.max_frames, loop=config.loop, detect_interval=config.detect_interval,
            motion_gate=config.motion_gate, drain_timeout=config.drain_timeout, backoff_max_s=config.backoff_max_s,
            outbox_max_mb=config.outbox_max_mb, outbox_max_age_s=config.outbox_max_age_s,
            commit_interval_s=config.commit_interval_s, credentials=credentials,
            gate_sample_every=config.gate_sample_every, engine_confirm_s=config.engine_confirm_s,
            download_mbps=config.download_mbps, fallback_model=config.model, serving=config.serving,
            restart_mode=config.restart_mode, analytics=dict(config.analytics), objects=config.objects,
            snapshots=config.snapshots,
        )


@dataclass
class Adaptation:
    """What `--auto-plan` adds to the loop: the runtime controller and how to load a rung's detector.

    `load_detector(rung)` runs on a worker thread and returns a warmed-up detector for the rung's
    model and input size; `temperature()` gives the hottest thermal zone in C (None: unknown).
    """
    controller: RuntimeController
    load_detector: Callable[[Rung], Detector]
    temperature: Callable[[], float | None] = lambda: None
    every_s: float = CONTROL_EVERY_S
