"""What `edge-agent run` tells the loop (`RunOptions`), and what `--auto-plan` adds (`Adaptation`)."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from edgefleet.adaptive.controller import Rung, RuntimeController
from edgefleet.models.base import DEFAULT_CONFIDENCE_THRESHOLD, Detector

from .config import out_of_range
from .errors import ConfigError

CONTROL_EVERY_S = 1.0
"""How often the runtime controller gets a health reading (its timers assume about once a second)."""


@dataclass
class RunOptions:
    controller: str
    sources: list[str]
    state_dir: Path
    enroll_key: str | None = None
    name: str = ""
    stream_ids: list[str] = field(default_factory=list)  # default cam0, cam1, ...
    max_frames: int = 0          # per stream; 0: until the source ends
    loop: bool = False           # restart a finite source at its end (demo)
    detect_interval: int = 1     # detect every Nth frame of a stream, track in between
    motion_threshold: float = 0  # >0: skip detection on static scenes (see adaptive.schedule)
    drain_timeout_s: float = 30.0
    backoff_max_s: float = 10.0
    outbox_max_bytes: int = 512_000_000
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
    """`edge-agent serve`: served streams (agent.inference) feed the agent too, so it may have no
    --source and runs until stopped, not until its sources end."""

    def __post_init__(self) -> None:
        if not self.sources and not self.serving:
            raise ConfigError("at least one --source is needed")
        if not self.stream_ids:
            self.stream_ids = [f"cam{i}" for i in range(len(self.sources))]
        if len(self.stream_ids) != len(self.sources):
            raise ConfigError(f"{len(self.stream_ids)} --stream-id for {len(self.sources)} --source; give one each")
        if len(set(self.stream_ids)) != len(self.stream_ids):
            raise ConfigError(f"--stream-id values must be unique, got {self.stream_ids}")
        # the bounds the flags have (agent.config.RANGES), for callers of the API too
        problem = out_of_range(argparse.Namespace(
            max_frames=self.max_frames, detect_interval=self.detect_interval, motion_gate=self.motion_threshold,
            drain_timeout=self.drain_timeout_s, backoff_max_s=self.backoff_max_s,
            outbox_max_mb=self.outbox_max_bytes / 1e6, outbox_max_age_s=self.outbox_max_age_s,
            commit_interval_s=self.commit_interval_s, gate_sample_every=self.gate_sample_every,
            engine_confirm_s=self.engine_confirm_s, download_mbps=self.download_mbps))
        if problem:
            raise ConfigError(problem)
        if not 0 <= self.publish_threshold <= 1:
            raise ConfigError(f"publish_threshold must be within [0, 1], got {self.publish_threshold}")


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
