"""The agent: the frame loop (agent.loop) and, around it, everything that is not a frame.

Between ticks, on the loop thread, the supervisor applies the controller's commands (agent.commands), lets the
engine manager swap in a deployed engine (agent.engines), and with an `Adaptation` (`edge-agent
run --auto-plan`) runs the runtime controller once a second (agent.adapt). It reports: the link
(agent.link: enrollment, Session with hello, heartbeats and the plan, PublishDetections of the
committed records), MQTT (agent.mqtt) and the health sample the metrics endpoint reads.

Served streams (`edge-agent serve`) are the loop's feeds: the caller gives factories that make
them from a `FeedContext` (the agent's detector, health, schedules), so they exist from
construction on.

Threads: one reader per source, the prepare thread (look-ahead letterbox for files), the loop
thread (`run`), the outbox writer, the link (asyncio), the rung loader, the engine worker.
"""
from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.adaptive.controller import ControllerEvent, HealthReading
from edgefleet.adaptive.plan import DevicePlan, detector_fields
from edgefleet.adaptive.probe import HardwareProfile
from edgefleet.models.base import Detector

from . import commands as agent_commands
from .adapt import Adapter, RungHistory
from .bytetrack import ByteTrack, ByteTrackConfig
from .desired import ConfigStatus, DesiredConfig
from .engines import ActiveEngines, DeploymentStatus, EngineManager, Swap, slot_turn
from .errors import ConfigError, ControllerUnreachable, RestartRequested
from .health import HealthMonitor, HealthSample
from .link import Link
from .loop import DetectorSlot, Feed, FeedContext, FrameLoop, Schedules
from .messages import Command, Hello, PlanOverride
from .objects import OBJECT_TOTALS
from .options import Adaptation, RunOptions
from .outbox import Outbox
from .overrides import describe_override, override_interval
from .recorder import Recorder
from .sources import Source
from .watchdog import Watchdog

if TYPE_CHECKING:
    from .mqtt import MqttPublisher

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    frames: int
    detections: int
    seconds: float
    outbox_left: int
    inference_ms_p50: float

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


class Agent:
    def __init__(self, options: RunOptions, detector: Detector, source_factory: Callable[[str], Source],
                 profile: HardwareProfile, plan: DevicePlan, *, tracker_factory: Callable[[], ByteTrack] = ByteTrack,
                 adaptation: Adaptation | None = None, mqtt: MqttPublisher | None = None,
                 load_model: Callable[[Path], Detector] | None = None, active: ActiveEngines | None = None,
                 feeds: Sequence[Callable[[FeedContext], Feed]] = (), desired: DesiredConfig | None = None):
        """`tracker_factory()` makes each stream's own tracker (track ids count per stream);
        e.g. `functools.partial(ByteTrack, ByteTrackConfig(lost_track_buffer=60))`.
        With `adaptation`, `detector` must be the one for the controller's current rung, whose
        detect interval replaces `options.detect_interval`. With `mqtt`, committed frames and
        health samples also go to the broker (under the enrolled device id, once known).
        `load_model(path)` loads a deployed artifact's detector on the engine worker thread (default:
        models.load_detector with the tracker's low threshold); `active` is the engines' state
        (`<state_dir>/engines/active.json`, after `on_start()`), read here when not given.
        `feeds` make the served streams (agent.inference.InferenceCore) from the agent's parts.
        `desired` is the controller's configuration on this device (agent.desired; None: refused)."""
        self.options, self.profile, self.mqtt = options, profile, mqtt
        self.desired = desired
        self._source_factory, self._tracker_factory = source_factory, tracker_factory
        self.load_model = load_model or _default_load
        """Loads a model file as this agent's detectors are loaded (engines, a restart's reload)."""
        self.restart_requested: RestartRequested | None = None
        """Set by a restart command in exit mode (agent.restart): `run` ends, `check_restart` raises it."""
        self.stop_event = threading.Event()
        self.health = HealthMonitor()
        self.slot = DetectorSlot(detector, self.health)
        self.adapter = Adapter(adaptation) if adaptation is not None else None
        self.planned_interval = self.adapter.rung.detect_interval if self.adapter else options.detect_interval
        """The detect interval before any operator override: what `clear` returns to."""
        self.schedules = Schedules(self.planned_interval, options.motion_gate)
        self.plan = plan
        """The plan the loop runs, and why; replaced (never mutated) on every change."""
        self._plan_version = 0
        self.commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        """Commands from the controller, queued by the link thread, applied by the loop between ticks."""
        self.started = time.time()
        self.outbox = _open_outbox(options)
        self.link = self._link()
        self.engines = self._engine_manager(load_model, active)
        """Deployments and rollbacks (agent.engines): a worker thread loads and shadow-tests a
        candidate; the loop feeds it sampled frames and swaps it in between ticks."""
        self.captures = agent_commands.FrameCaptures(self.link.send_result)
        """CaptureFrame's drawing and encoding, off the loop thread (agent.commands)."""
        self.recorder = Recorder(self.outbox, options.commit_interval_s, self._listeners())
        context = FeedContext(self.slot.detect_served, self.slot.names, self.health, self.schedules.new_scheduler,
                              options.publish_threshold, frozenset(options.stream_ids))
        self.loop = self.make_loop(options, [make(context) for make in feeds])
        self.history = RungHistory(lambda: self.health.frames_total)

    def _link(self) -> Link:
        options = self.options
        return Link(
            controller=options.controller, state_dir=options.state_dir,
            outbox_path=options.state_dir / "outbox.db", enroll_key=options.enroll_key,
            name=options.name or socket.gethostname(), hello=self._hello, health=self.health_sample,
            on_command=self.commands.put, plan=lambda: (self._plan_version, self.plan),
            deployment=self._latest_deployment,
            credentials=options.credentials, backoff_max_s=options.backoff_max_s,
        )

    def _engine_manager(self, load_model: Callable[[Path], Detector] | None,
                        active: ActiveEngines | None) -> EngineManager:
        options, link = self.options, self.link
        return EngineManager(
            options.state_dir, fetch=link.fetch_artifact, load=load_model or _default_load,
            report=link.send_deployment, result=link.send_result,
            public_key=lambda: link.identity.controller_public_key if link.identity else b"",
            active=active or ActiveEngines(options.state_dir / "engines" / "active.json", options.engine_confirm_s),
            fallback_model=options.fallback_model, confirm_after_s=options.engine_confirm_s,
            latency_budget_ms=lambda: self.plan.latency_budget_ms,
            sample_every=options.gate_sample_every, publish_threshold=options.publish_threshold,
            download_max_bytes_per_s=options.download_mbps * 1e6,
            current_turn=lambda: slot_turn(self.slot),  # the shadow test times both engines in turns
        )

    def _listeners(self) -> list[Callable]:
        """Who gets each committed group, on the outbox writer's thread: MQTT, and the link, which
        sends them from memory unless the outbox just dropped records (the link is behind)."""
        link = self.link
        listeners = [lambda records, dropped: link.committed(records if not dropped else [])]
        if self.mqtt is not None:
            mqtt = self.mqtt
            listeners.insert(0, lambda records, dropped: mqtt.on_frames(records))
        return listeners

    @property
    def detector(self) -> Detector:
        """The detector the loop runs now."""
        return self.slot.detector

    # ---- reporting (any thread) ----

    def _hello(self) -> Hello:
        return Hello(self.profile, self.plan, [s.stream_id for s in self.loop.streams], self.started,
                     config=self.desired.status if self.desired is not None else ConfigStatus(),
                     labels=dict(self.options.labels))

    def health_sample(self) -> HealthSample:
        """The current health sample; safe from any thread (the link and MQTT threads call it too)."""
        sample = self.health.sample(frames_dropped=self.loop.dropped_total(), outbox_depth=self.recorder.depth)
        temperature = (self.adapter.temperature() or 0.0) if self.adapter is not None else 0.0
        return replace(sample, temperature_c=temperature, streams=tuple(self.loop.stream_health()),
                       outbox_dropped=self.recorder.dropped_before + self.outbox.dropped)  # every run of the device

    def _latest_deployment(self) -> DeploymentStatus | None:
        """The last deployment status, re-sent by the link after each (re)connect (any thread)."""
        return self.engines.latest_status()

    def health_dict(self) -> dict:
        """The health sample as JSON-ready data (MQTT's stats topic, --metrics-listen)."""
        return asdict(self.health_sample())

    def _device_id(self) -> str | None:
        return self.link.identity.device_id if self.link.identity else None

    # ---- the run ----

    def run(self) -> RunResult:
        self.loop.start()  # raises SourceError before anything else starts
        self.link.start()
        if self.mqtt is not None:
            self.mqtt.start(self._device_id, self.health_dict)
        self.recorder.start()
        t0 = time.monotonic()
        if self.adapter is not None:
            self.adapter.start(t0)
        watchdog = Watchdog.from_env()  # systemd's Type=notify + WatchdogSec (a no-op elsewhere)
        watchdog.ready()
        self.history.enter(self._rung_label(), t0)
        clean = False  # a clean exit confirms a freshly swapped engine (agent.engines.ActiveEngines)
        try:
            while self.loop.running():
                if self.link.fatal is not None:
                    raise self.link.fatal
                self.loop.tick()
                self._between_ticks(watchdog)
            clean = True
            self.loop.finish()
            seconds = time.monotonic() - t0
            self.history.close(t0 + seconds)
            left = self.recorder.drain(self.options.drain_timeout, lambda: self.link.fatal is not None)
        finally:
            watchdog.stopping()
            self._close(clean)
        if self.link.fatal is not None:
            raise self.link.fatal
        return RunResult(self.recorder.frames, self.recorder.detections, seconds, left,
                         self.health.sample().inference_ms_p50)

    def _between_ticks(self, watchdog: Watchdog) -> None:
        now = time.monotonic()
        if not self.commands.empty():
            self.apply_commands(now)
        self.engine_tick(now)
        watchdog.tick()
        if self.adapter is not None:
            self.control(now)

    def _close(self, clean: bool) -> None:
        """In reverse start order; the outbox last."""
        self.engines.close(clean=clean)
        self.captures.close()
        if self.adapter is not None:
            self.adapter.stop()
        if self.mqtt is not None:
            self.mqtt.stop()
        self.loop.close()
        self.recorder.close()
        self.link.stop()
        self.outbox.close()

    # ---- the plan ----

    def _set_detect_interval(self, interval: int) -> None:
        self.loop.set_detect_interval(interval)

    def replan(self, reason: str) -> None:
        """Record the plan the loop runs now, with why; the link reports it with the next heartbeat."""
        plan = replace(self.plan, detect_interval=self.schedules.detect_interval, reason=reason)
        if self.adapter is not None:
            rung = self.adapter.rung
            plan = replace(plan, model=rung.model, input_width=rung.input_width, input_height=rung.input_height)
        self.plan = plan
        self._plan_version += 1

    def _rung_label(self) -> str:
        return self.adapter.rung.label() if self.adapter is not None else f"every {self.schedules.detect_interval}"

    def _use_detector(self, detector: Detector) -> None:
        self.slot.swap(detector)

    def _apply_rung(self, adapter: Adapter) -> None:
        """Make the loop run the controller's current rung: detect interval now, detector when loaded."""
        self._set_detect_interval(adapter.rung.detect_interval)
        adapter.request_detector()

    def control(self, now: float) -> ControllerEvent | None:
        """Between ticks, on the loop thread: swap in a detector that finished loading; once every
        `every_s`, give the controller a health reading and apply the change it asks for."""
        adapter = self.adapter
        if adapter is None:
            return None
        detector = adapter.take_detector()
        if detector is not None:
            before = str(getattr(self.slot.detector, "model_path", ""))
            self._use_detector(detector)
            fields = detector_fields(detector, adapter.rung.model_path)
            if before == str(adapter.rung.model_path):  # another size of the same file: a deployed one keeps
                del fields["artifact_sha256"]           # the rollout's sha256 (a bundle's is its tar's)
            self.plan = replace(self.plan, **fields)
            self._plan_version += 1  # the rung's model, its backend and precision, with the next heartbeat
            logger.info("now detecting with %s at %dx%d", adapter.rung.model, *adapter.rung.input_size)
        event = adapter.step(now, self._reading)
        if event is None:
            return None
        self.history.close(now)
        self.history.enter(self._rung_label(), now)
        self._apply_rung(adapter)
        self.replan(f"runtime controller, step {event.direction} ({event.cause}): {event.reason}")
        return event

    def _reading(self) -> HealthReading:
        sample = self.health_sample()  # with the hottest thermal zone, read once (0.0: unknown)
        return HealthReading(inference_ms_p95=sample.inference_ms_p95, inference_ms_p50=sample.inference_ms_p50,
                             fps=sample.fps, frames_dropped=sample.frames_dropped,
                             temperature_c=sample.temperature_c or None)

    # ---- commands from the fleet (agent.commands) ----

    def apply_commands(self, now: float) -> None:
        """Apply what the controller sent since the last tick (on the loop thread)."""
        agent_commands.apply_commands(self, now)

    def check_restart(self) -> None:
        """After `run`: raise RestartRequested when a restart command asked the agent to exit for systemd."""
        if self.restart_requested is not None:
            raise self.restart_requested

    def apply_plan_override(self, override: PlanOverride, now: float) -> None:
        """An operator's pin or bounds; `clear` returns to the device's own plan.

        With the runtime controller, the override becomes its ladder: a pin is a ladder of one rung
        (the controller then cannot move), bounds keep the rungs inside them. Without it only the
        detect interval can follow; a pinned input size or model needs `--auto-plan`.
        """
        if self.adapter is None:
            interval = override_interval(self.planned_interval, override)
            self._set_detect_interval(interval)
            self.replan(f"operator override: {describe_override(override)}")
            logger.info("plan override: detecting every %d frame(s)", interval)
            return
        self.adapter.override(override)  # a LadderError leaves everything as it was
        self.history.close(now)
        self.history.enter(self._rung_label(), now)
        self._apply_rung(self.adapter)
        self.replan(f"operator override: {describe_override(override)}")
        logger.info("plan override: %s; %d rung(s) left to the controller, now %s",
                    "cleared" if override.clear else "applied", len(self.adapter.controller.ladder),
                    self.adapter.rung.label())

    def make_loop(self, options: RunOptions, feeds: Sequence[Feed]) -> FrameLoop:
        """A frame loop on `options` with this agent's detector, schedules, recorder and `feeds` (not started)."""
        return FrameLoop(options, self.slot, self.schedules, self.health, self.recorder, self._source_factory,
                         self.stop_event, tracker_factory=self._tracker_factory, feeds=feeds,
                         observe=self.engines.observe)

    def restart_loop(self, options: RunOptions | None = None) -> None:
        """A new frame loop on `options` (default: the current ones), between ticks: new sources,
        trackers and schedulers; the outbox, recorder, link and engines stay up, so records keep their
        sequence. A SourceError leaves the old loop running."""
        options = options or self.options
        loop = self.make_loop(options, self.loop.feeds)
        try:
            loop.start()
        except BaseException:
            loop.close()  # the sources it did start
            raise
        self.use_loop(loop, options, None)

    def use_loop(self, loop: FrameLoop, options: RunOptions, detector: Detector | None) -> None:
        old, self.loop, self.options = self.loop, loop, options
        old.close()  # its sources; the feeds (served streams) carry on in the new loop
        if detector is not None:
            self._use_detector(detector)
        logger.info("frame loop restarted: streams %s", ", ".join(options.stream_ids) or "none")

    # ---- deployments (agent.engines) ----

    def engine_tick(self, now: float) -> None:
        """Between ticks, on the loop thread: swap in an engine that passed its shadow test (or a
        rollback's), and let the engine manager confirm a swapped engine that has run long enough."""
        swap = self.engines.take_swap()
        if swap is not None:
            self._swap_engine(swap, now)
        self.engines.tick(now)

    def _swap_engine(self, swap: Swap, now: float) -> None:
        """The old detector served every frame up to here; from the next tick on the new one does."""
        self._use_detector(swap.detector)
        path = str(getattr(swap.detector, "model_path", "") or (swap.ref.path if swap.ref else ""))
        name = swap.name or Path(path).stem
        if self.adapter is not None:  # keep it simple: every rung keeps its size and interval, with the new file
            self.adapter.retarget(name, path, swap.detector.input_size)
        fields = detector_fields(swap.detector, path)
        self.plan = replace(self.plan, model=name, **{**fields, "artifact_sha256": swap.artifact_sha256
                                                      or fields["artifact_sha256"]})
        self.engines.swapped(swap, now)
        self.replan(swap.plan_reason)
        logger.info("now detecting with %s (%s): %s", name, swap.artifact_sha256[:12] or "--model", swap.plan_reason)
        if self.adapter is not None:
            self._apply_rung(self.adapter)  # the rung's own input size, when it differs from the file's default

    # ---- the end ----

    def summary(self, result: RunResult) -> dict:
        """What `edge-agent run` prints at the end (JSON)."""
        summary: dict[str, Any] = {
            "device_id": self._device_id(), "streams": {s.stream_id: s.frames for s in self.loop.streams},
            "frames": result.frames, "detections": result.detections,
            "seconds": round(result.seconds, 2), "fps": round(result.fps, 2),
            "inference_ms_p50": round(result.inference_ms_p50, 2),
            "acked_sequence": self.link.acked_sequence, "outbox_left": result.outbox_left,
            "outbox_dropped": self.outbox.dropped, "records": self.recorder.records,
            "objects": _objects_summary(),
        }
        if self.mqtt is not None:
            summary["mqtt"] = {"published": self.mqtt.counters.published, "dropped": self.mqtt.counters.dropped}
        if self.adapter is not None:
            summary["rung"] = self.adapter.rung.label()
            summary["controller_events"] = [{"direction": e.direction, "cause": e.cause, "to": e.rung.label(),
                                             "changes": list(e.changes), "reason": e.reason}
                                            for e in self.adapter.events]
            summary["rungs"] = [{"rung": s.rung, "frames": s.frames, "seconds": s.seconds,
                                 "fps": round(s.frames / s.seconds, 2) if s.seconds else 0.0}
                                for s in self.history.spans]
        return summary

    def check_delivered(self, result: RunResult) -> None:
        """Raise ControllerUnreachable when `run` ended with records the controller had not
        acknowledged within the drain timeout (they stay in the outbox for the next run)."""
        if result.outbox_left:
            raise ControllerUnreachable(
                f"controller {self.options.controller} did not acknowledge {result.outbox_left} record(s) within "
                f"{self.options.drain_timeout:.0f}s ({self.link.last_error or 'no answer'}); they stay in "
                f"{self.options.state_dir / 'outbox.db'} and are sent on the next run"
            )


def _open_outbox(options: RunOptions) -> Outbox:
    try:
        options.state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--state-dir {options.state_dir}: {err.strerror}") from err
    return Outbox(options.state_dir / "outbox.db", max_bytes=options.outbox_max_bytes,
                  max_age_s=options.outbox_max_age_s)


def _default_load(path: Path) -> Detector:
    from edgefleet.models import load_detector

    return load_detector(path, confidence_threshold=ByteTrackConfig().low_confidence_threshold)


def _objects_summary() -> dict[str, int]:
    """Objects confirmed and snapshots made and dropped this run, all streams (agent.objects' totals)."""
    events, snapshots = OBJECT_TOTALS.snapshot()
    return {"objects": sum(n for (_, kind), n in events.items() if kind == "new"),
            "snapshots": sum(n for (_, outcome), n in snapshots.items() if outcome == "made"),
            "snapshots_dropped": sum(n for (_, outcome), n in snapshots.items() if outcome != "made")}
