"""`edge-agent run`: sources -> one batched detector call -> per-stream trackers -> outbox.

Each tick takes the frames that are ready (one per stream at most; decoding runs on each
source's reader thread, beside inference), runs the detector once on the frames due for
detection (every `detect_interval`-th frame of a stream, see adaptive.schedule), and hands
each stream's tracker its detections, or nothing so that it predicts. Records are committed
to the outbox in groups (`RunOptions.commit_interval_s`) on the outbox writer's thread; the
link thread publishes what is committed. With file sources, the next tick's frames are letterboxed on a
prepare thread while the current inference runs (`Agent._look_ahead`).

With an `Adaptation` (agent.options; `edge-agent run --auto-plan`), the loop thread also runs
the runtime controller once a second (`CONTROL_EVERY_S`): a new detect interval applies to every
stream's scheduler at once; a new input size or model is loaded on a worker thread
(agent.rung_loader) and swapped in between ticks, so the loop never waits for a model to load.
"""
from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.adaptive.controller import ControllerEvent, HealthReading, Rung, RuntimeController
from edgefleet.adaptive.errors import LadderError
from edgefleet.adaptive.schedule import FrameScheduler, MotionGate
from edgefleet.models.base import Detector, Prepared
from edgefleet.v1 import agent_pb2, types_pb2

from .bytetrack import ByteTrack, ByteTrackConfig
from .engines import ActiveEngines, EngineManager, Swap
from .errors import ConfigError, ControllerUnreachable
from .health import HealthMonitor
from .link import Link, deploy_from_pb
from .options import Adaptation, RunOptions
from .outbox import Outbox, OutboxRecord, OutboxWriter
from .overrides import describe_override, override_ladder
from .rung_loader import RungLoader
from .sources import Frame, Source
from .watchdog import Watchdog

if TYPE_CHECKING:
    from .inference import InferenceCore as ServedFeed
    from .mqtt import MqttPublisher

logger = logging.getLogger(__name__)

GATHER_WAIT_S = 0.05
"""The loop's longest wait for a frame when no stream has one (any stream's frame ends it at once):
how often an idle loop still commits, applies commands and feeds the watchdog."""


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


@dataclass
class Ahead:
    """The next tick's frames, gathered while this tick's inference runs (Agent._look_ahead): one
    per stream that had one ready, those due for detection, and their batch being prepared."""
    ready: list[tuple[Stream, Frame]]
    due: list[tuple[Stream, Frame]]
    prepared: Future[Prepared] | None


class Stream:
    """One source with its own tracker, schedule and frame count."""

    def __init__(self, stream_id: str, spec: str, factory: Callable[[str], Source], tracker: ByteTrack,
                 scheduler: FrameScheduler, frame_ready: threading.Event):
        self.stream_id, self.spec, self._factory = stream_id, spec, factory
        self.frame_ready = frame_ready  # shared by the agent's streams: set when any has a frame
        self.tracker = tracker
        self.scheduler = scheduler
        self.source = factory(spec)
        self.frames = 0
        self.done = False

    def start(self) -> None:
        self.source.start(notify=self.frame_ready)

    def restart(self) -> None:
        self.source.stop()
        self.source = self._factory(self.spec)
        self.start()


class Agent:
    def __init__(self, options: RunOptions, detector: Detector, source_factory: Callable[[str], Source],
                 profile: dict, plan: dict, tracker_factory: Callable[[], ByteTrack] = ByteTrack,
                 adaptation: Adaptation | None = None, mqtt: MqttPublisher | None = None,
                 load_model: Callable[[Path], Detector] | None = None, active: ActiveEngines | None = None):
        """`tracker_factory()` makes each stream's own tracker (track ids count per stream);
        e.g. `functools.partial(ByteTrack, ByteTrackConfig(lost_track_buffer=60))`.
        With `adaptation`, `detector` must be the one for the controller's current rung, whose
        detect interval replaces `options.detect_interval`. With `mqtt`, committed frames and
        health samples also go to the broker (under the enrolled device id, once known).
        `load_model(path)` loads a deployed artifact's detector on the engine worker thread (default:
        models.load_detector with the tracker's low threshold); `active` is the engines' state
        (`<state_dir>/engines/active.json`, after `on_start()`), read here when not given."""
        self.options = options
        self.mqtt = mqtt
        self.detector = detector
        self.adaptation = adaptation
        self.events: list[ControllerEvent] = []
        self.rung_history: list[dict] = []
        """One entry per rung the loop ran at: its label, and the frames and seconds spent there."""
        self._last_control = 0.0
        self.rungs: RungLoader | None = None
        if adaptation is not None:
            rung = adaptation.controller.rung
            self.rungs = RungLoader(adaptation.load_detector, rung)
            options.detect_interval = rung.detect_interval
        self._planned = (list(adaptation.controller.ladder) if adaptation else None, options.detect_interval)
        """The ladder and detect interval before any operator override: what `clear` returns to."""
        self.commands: queue.SimpleQueue[agent_pb2.Command] = queue.SimpleQueue()
        """Commands from the controller, queued by the link thread, applied by the loop between ticks."""
        self.profile = profile
        self.plan = plan
        """The plan as edgefleet.v1.RuntimePlan fields; replaced (never mutated) on every change."""
        self._plan_version = 0
        self.health = HealthMonitor()
        self.stop_event = threading.Event()
        self.served: ServedFeed | None = None
        """`edge-agent serve`: the inference service's streams (agent.inference.InferenceCore), whose
        records this loop commits with its own and whose streams and drops join the health samples."""
        self.detector_lock = threading.Lock()
        """Held around every detector call and swap: served batches run on another thread."""
        self._frame_ready = threading.Event()
        self.streams = [Stream(sid, spec, source_factory, tracker_factory(), self.new_scheduler(), self._frame_ready)
                        for sid, spec in zip(options.stream_ids, options.sources)]
        try:
            options.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"--state-dir {options.state_dir}: {err.strerror}") from err
        self.outbox = Outbox(options.state_dir / "outbox.db", max_bytes=options.outbox_max_bytes,
                             max_age_s=options.outbox_max_age_s)
        """The pipeline's side of the outbox: it appends and enforces the bounds (`outbox.dropped`)."""
        self._dropped_before = self.outbox.dropped_total() - self.outbox.dropped  # by earlier runs
        self._outbox_depth = 0
        self._uncommitted: list[OutboxRecord] = []
        self._handed_over = 0  # records given to the outbox writer (self.frames counts the committed ones)
        self._last_commit = time.monotonic()
        self.writer: OutboxWriter | None = None
        self._preparer: ThreadPoolExecutor | None = None
        self._ahead: Ahead | None = None
        self.frames = self.detections = 0
        self.started = time.time()
        self.link = Link(
            controller=options.controller, state_dir=options.state_dir,
            outbox_path=options.state_dir / "outbox.db", enroll_key=options.enroll_key,
            name=options.name or socket.gethostname(), hello=self._hello, health=self._health,
            on_command=self.commands.put, plan=lambda: (self._plan_version, self.plan),
            deployment=self._latest_deployment,
            credentials=options.credentials, backoff_max_s=options.backoff_max_s,
        )
        self.engines = EngineManager(
            options.state_dir, fetch=self.link.fetch_artifact, load=load_model or _default_load,
            report=lambda status: self.link.send_deployment(status.to_dict()), result=self.link.send_result,
            public_key=lambda: self.link.identity.controller_public_key if self.link.identity else b"",
            active=active or ActiveEngines(options.state_dir / "engines" / "active.json", options.engine_confirm_s),
            fallback_model=options.fallback_model, confirm_after_s=options.engine_confirm_s,
            latency_budget_ms=lambda: float(self.plan.get("latency_budget_ms") or 0.0),
            sample_every=options.gate_sample_every, publish_threshold=options.publish_threshold,
            download_max_bytes_per_s=options.download_mbps * 1e6,
        )
        """Deployments and rollbacks (agent.engines): a worker thread loads and shadow-tests a
        candidate; the loop feeds it sampled frames and swaps it in between ticks."""

    def new_scheduler(self) -> FrameScheduler:
        """A stream's schedule at the current detect interval (local streams, and served ones)."""
        gate = MotionGate(self.options.motion_gate) if self.options.motion_gate else None
        interval = self.options.detect_interval
        return FrameScheduler(interval, gate, max_interval=max(30, interval))

    def _hello(self) -> dict:
        return {"profile": self.profile, "plan": self.plan, "streams": [s.stream_id for s in self.streams],
                "started": self.started}

    def health_sample(self) -> dict:
        """The current health sample; safe from any thread (the link and MQTT threads call it too)."""
        return self._health()

    def _health(self) -> dict:
        dropped = sum(s.source.frames_dropped for s in self.streams)
        dropped += self.served.dropped_total() if self.served is not None else 0
        sample = self.health.sample(frames_dropped=dropped, outbox_depth=self._outbox_depth)
        sample["outbox_dropped"] = self._dropped_before + self.outbox.dropped  # every run of this device
        if self.adaptation is not None:
            # the rung's plan goes up with the heartbeats (Link's `plan`); this copy is for logs and the summary
            controller = self.adaptation.controller
            sample["rung"] = {"index": controller.state.rung, **controller.rung.to_dict()}
            sample["temperature_c"] = self.adaptation.temperature() or 0.0
        sample["streams"] = [
            {"stream_id": s.stream_id, "source": s.spec, "state": "ended" if s.done else s.source.state,
             "frames": s.frames, "dropped": s.source.frames_dropped, "error": s.source.error or ""}
            for s in self.streams
        ] + (self.served.stream_health() if self.served is not None else [])
        return sample

    # ---- the loop ----

    def run(self) -> RunResult:
        for stream in self.streams:
            stream.start()  # raises SourceError before anything else starts
        self.link.start()
        if self.mqtt is not None:
            self.mqtt.start(lambda: self.link.identity.device_id if self.link.identity else None, self._health)
        self.writer = OutboxWriter(self.outbox, self._committed)
        if not any(stream.source.live for stream in self.streams):
            self._preparer = ThreadPoolExecutor(1, thread_name_prefix="prepare")  # see _look_ahead
        t0 = self._last_control = time.monotonic()
        watchdog = Watchdog.from_env()  # systemd's Type=notify + WatchdogSec (a no-op elsewhere)
        watchdog.ready()
        self._enter_rung(t0)
        clean = False  # a clean exit confirms a freshly swapped engine (agent.engines.ActiveEngines)
        try:
            while not self.stop_event.is_set() and (self.options.serving or self._ahead is not None
                                                     or not all(s.done for s in self.streams)):
                if self.link.fatal is not None:
                    raise self.link.fatal
                ahead, self._ahead = self._ahead, None
                ready = ahead.ready if ahead is not None else self._gather()
                if ready:
                    self._uncommitted += self._process(ready, ahead)
                if self.served is not None:
                    self._uncommitted += self.served.take_records()
                if self._uncommitted and time.monotonic() - self._last_commit >= self.options.commit_interval_s:
                    self._commit()
                if not self.commands.empty():
                    self.apply_commands(time.monotonic())
                self.engine_tick(time.monotonic())
                watchdog.tick()
                if self.adaptation is not None:
                    self.control(time.monotonic())
            clean = True
            if self.served is not None:
                self._uncommitted += self.served.take_records()
            self._commit()
            self.writer.flush()
            seconds = time.monotonic() - t0
            self._close_rung(t0 + seconds)
            left = self._drain()
        finally:
            watchdog.stopping()
            self.engines.close(clean=clean)
            if self.rungs is not None:
                self.rungs.stop()
            if self.mqtt is not None:
                self.mqtt.stop()
            for stream in self.streams:
                stream.source.stop()
            if self._preparer is not None:
                self._preparer.shutdown()
            self.writer.close()
            self.link.stop()
            self.outbox.close()
        if self.link.fatal is not None:
            raise self.link.fatal
        return RunResult(self.frames, self.detections, seconds, left, self.health.sample()["inference_ms_p50"])

    def _commit(self) -> None:
        """Hand the pending records to the outbox writer; they count as produced once it committed them."""
        self._last_commit = time.monotonic()
        if not self._uncommitted:
            return
        records, self._uncommitted = self._uncommitted, []
        self._handed_over += len(records)
        self.writer.put(records)

    def _committed(self, records: list[OutboxRecord], dropped: int) -> None:
        """On the outbox writer's thread, after each commit (`dropped`: the oldest records the
        outbox dropped in it to stay within its bounds)."""
        if self.mqtt is not None:
            self.mqtt.on_frames(records)
        # the link sends these from memory, unless the outbox just dropped records (the link is behind)
        self.link.committed(records if not dropped else [])
        self.frames += len(records)
        self.detections += sum(len(r.objects) for r in records)
        self._outbox_depth += len(records) - dropped
        if self.frames % 50 < len(records):
            self._outbox_depth = self.outbox.depth()

    def _gather(self) -> list[tuple[Stream, Frame]]:
        """At most one frame per active stream. When none is ready, waits until any stream has
        one (up to `GATHER_WAIT_S`), so a frame is picked up the moment its reader has decoded
        it; with no stream left (serving), waits a commit period."""
        self._frame_ready.clear()  # a frame delivered from now on wakes the wait below
        ready = self._ready_frames()
        if not ready:
            if all(s.done for s in self.streams):  # serving, no local stream: nothing to wait on but the next commit
                self.stop_event.wait(max(0.01, self.options.commit_interval_s))
                return []
            self._frame_ready.wait(GATHER_WAIT_S)
            ready = self._ready_frames()
        return ready

    def _ready_frames(self) -> list[tuple[Stream, Frame]]:
        return [(s, f) for s in self.streams if (f := self._next_frame(s, timeout=0)) is not None]

    def _next_frame(self, stream: Stream, timeout: float) -> Frame | None:
        if stream.done:
            return None
        try:
            frame = stream.source.read(timeout=timeout)
        except TimeoutError:
            return None
        if frame is None:  # the source ended
            if self.options.loop and not stream.source.live:
                stream.restart()
            else:
                stream.done = True
            return None
        stream.frames += 1
        if self.options.max_frames and stream.frames >= self.options.max_frames:
            stream.done = True
        return frame

    def _schedule(self, ready: list[tuple[Stream, Frame]]) -> list[tuple[Stream, Frame]]:
        """The frames of `ready` due for detection (each stream's scheduler decides, and counts)."""
        return [(stream, frame) for stream, frame in ready if stream.scheduler.decide(frame.image)]

    def _process(self, ready: list[tuple[Stream, Frame]], ahead: Ahead | None = None) -> list[OutboxRecord]:
        """One tick: detect on the frames due (prepared ahead when `ahead` has them), track, records."""
        due = ahead.due if ahead is not None else self._schedule(ready)
        detections = {}
        if due:
            images = [frame.image for _, frame in due]
            prepared = ahead.prepared.result() if ahead is not None and ahead.prepared is not None else None
            if prepared is None or prepared.detector is not self.detector:  # none, or the detector was swapped
                prepared = self.detector.prepare(images)
            self._look_ahead()
            with self.detector_lock:
                outputs = self.detector.run_prepared(prepared)
            batch = self.detector.finish(prepared, outputs)
            self.health.record_inference(float(getattr(self.detector, "last_inference_ms", 0.0)))
            self.engines.observe(images, batch, self.detector.last_inference_ms)
            detections = {id(stream): dets for (stream, _), dets in zip(due, batch)}
        records = []
        names = self.detector.names
        now = time.time()
        for stream, frame in ready:
            # detections, or None: the tracker predicts this frame's boxes (rows marked predicted)
            dets, predicted = stream.tracker.step(detections.get(id(stream)), self.options.publish_threshold)
            labels = dets.labels(names)
            records.append(OutboxRecord.of_frame(stream.stream_id, frame.index, frame.capture_time, dets, labels,
                                                 predicted))
            self.health.record_frame((now - frame.capture_time) * 1000, labels, detected=id(stream) in detections)
        return records

    def _look_ahead(self) -> None:
        """Right before an inference call, with file sources only: take the next tick's frames
        (already decoded) and letterbox those due on the prepare thread while this call runs, so
        the next call starts without it. Live sources are not looked ahead: a tick should start
        from the newest frame there is, not one taken an inference earlier."""
        if self._preparer is None or self.stop_event.is_set():
            return
        ready = self._ready_frames()
        if not ready:
            return
        due = self._schedule(ready)
        prepared = self._preparer.submit(self.detector.prepare, [f.image for _, f in due]) if due else None
        self._ahead = Ahead(ready, due, prepared)

    def detect_served(self, images: list) -> list:
        """A served batch (agent.inference, from its batcher thread) on the detector the local
        streams use, one call at a time with theirs."""
        with self.detector_lock:
            batch = self.detector.detect_batch(images)
            ms = float(getattr(self.detector, "last_inference_ms", 0.0))
        self.health.record_inference(ms)
        return batch

    # ---- the runtime controller (--auto-plan) ----

    def control(self, now: float) -> ControllerEvent | None:
        """Between ticks, on the loop thread: swap in a detector that finished loading; once every
        `every_s`, give the controller a health reading and apply the change it asks for."""
        adaptation = self.adaptation
        if adaptation is None:
            return None
        detector = self.rungs.take(adaptation.controller.rung)
        if detector is not None:
            self._use_detector(detector)
            rung = adaptation.controller.rung
            logger.info("now detecting with %s at %dx%d", rung.model, *rung.input_size)
        if now - self._last_control < adaptation.every_s:
            return None
        self._last_control = now
        sample = self._health()  # with the hottest thermal zone, read once (0.0: unknown)
        reading = HealthReading.from_sample(sample, sample["temperature_c"] or None)
        event = adaptation.controller.update(reading, now)
        if event is None:
            return None
        self.events.append(event)
        self._close_rung(now)
        logger.info("controller: step %s (%s) to rung %d, %s: %s; fps %.1f, detector p95 %.1f ms",
                    event.direction, event.cause, event.to_rung, event.rung.label(), event.reason,
                    reading.fps, reading.inference_ms_p95)
        self._enter_rung(now)
        self._apply_rung()
        self._replan(f"runtime controller, step {event.direction} ({event.cause}): {event.reason}")
        return event

    def _replan(self, reason: str) -> None:
        """Record the plan the loop runs now, with why; the link reports it with the next heartbeat."""
        plan = {**self.plan, "detect_interval": self.options.detect_interval, "reason": reason}
        if self.adaptation is not None:
            rung = self.adaptation.controller.rung
            plan.update(model=rung.model, input_width=rung.input_width, input_height=rung.input_height)
        self.plan = plan
        self._plan_version += 1

    def _apply_rung(self) -> None:
        """Make the loop run the controller's current rung: detect interval now, detector when loaded."""
        self._set_detect_interval(self.adaptation.controller.rung.detect_interval)
        self.rungs.request(self.adaptation.controller.rung)

    def _set_detect_interval(self, interval: int) -> None:
        self.options.detect_interval = interval
        for stream in self.streams:
            stream.scheduler.set_interval(interval)
        if self.served is not None:
            self.served.set_detect_interval(interval)

    # ---- commands from the fleet ----

    def apply_commands(self, now: float) -> None:
        """Apply what the controller sent since the last tick (on the loop thread)."""
        while not self.commands.empty():
            command = self.commands.get_nowait()
            action = command.WhichOneof("action")
            if action == "deploy":
                self.engines.deploy(deploy_from_pb(command))
                continue
            if action == "rollback":
                self.engines.rollback(command.command_id, command.rollback.reason)
                continue
            if action == "ping":
                self.link.send_result(command.command_id, True)
                continue
            if action != "set_plan":
                logger.info("command %s (%s) is not supported by this agent yet", command.command_id, action)
                continue
            try:
                self.apply_plan_override(command.set_plan, now)
            except LadderError as err:
                logger.error("plan override %s refused: %s", command.command_id, err)

    # ---- deployments (agent.engines) ----

    def _latest_deployment(self) -> dict | None:
        """The last deployment status, re-sent by the link after each (re)connect (any thread)."""
        engines = getattr(self, "engines", None)
        status = engines.latest_status() if engines is not None else None
        return status.to_dict() if status is not None else None

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
        width, height = swap.detector.input_size
        if self.adaptation is not None:
            # keep it simple: every rung keeps its size and interval, with the new model file
            controller = self.adaptation.controller
            def retargeted(ladder: list[Rung]) -> list[Rung]:
                return [replace(r, model=name, model_path=path, expected_ms=None) for r in ladder]

            self.adaptation.controller = RuntimeController(retargeted(controller.ladder), controller.config,
                                                           controller.state.rung)
            self._planned = (retargeted(self._planned[0]), self._planned[1])
            self.rungs.retarget((path, (width, height)))
        self.plan = {**self.plan, "model": name, "artifact_sha256": swap.artifact_sha256,
                     "backend": type(swap.detector).__module__.rsplit(".", 1)[-1],
                     "input_width": width, "input_height": height}
        self.engines.swapped(swap, now)
        self._replan(swap.plan_reason)
        logger.info("now detecting with %s (%s): %s", name, swap.artifact_sha256[:12] or "--model", swap.plan_reason)
        if self.adaptation is not None:
            self._apply_rung()  # the rung's own input size, when it differs from the file's default

    def apply_plan_override(self, override: types_pb2.SetPlan, now: float) -> None:
        """An operator's pin or bounds (edgefleet.v1.SetPlan); `clear` returns to the device's own plan.

        With the runtime controller, the override becomes its ladder: a pin is a ladder of one rung
        (the controller then cannot move), bounds keep the rungs inside them. Without it only the
        detect interval can follow; a pinned input size or model needs `--auto-plan`.
        """
        ladder, interval = self._planned
        if self.adaptation is None:
            if override.HasField("pinned") and override.pinned.detect_interval:
                interval = override.pinned.detect_interval
            elif not override.clear:
                interval = max(interval, override.min_detect_interval or 1)
                interval = min(interval, override.max_detect_interval or interval)
            self._set_detect_interval(interval)
            self._replan(f"operator override: {describe_override(override)}")
            logger.info("plan override: detecting every %d frame(s)", interval)
            return
        controller = self.adaptation.controller
        if not override.clear:
            ladder = override_ladder(ladder, controller.rung, override)
        start = ladder.index(controller.rung) if controller.rung in ladder else 0
        self._close_rung(now)
        self.adaptation.controller = RuntimeController(ladder, controller.config, start)
        self._enter_rung(now)
        self._apply_rung()
        self._replan(f"operator override: {describe_override(override)}")
        logger.info("plan override: %s; %d rung(s) left to the controller, now %s",
                    "cleared" if override.clear else "applied", len(ladder), self.adaptation.controller.rung.label())

    def _enter_rung(self, now: float) -> None:
        label = (self.adaptation.controller.rung.label() if self.adaptation is not None
                 else f"every {self.options.detect_interval}")
        self.rung_history.append({"rung": label, "since": now, "frames0": self._counted(), "frames": 0,
                                  "seconds": 0.0})

    def _close_rung(self, now: float) -> None:
        if self.rung_history:
            entry = self.rung_history[-1]
            entry["frames"] = self._counted() - entry["frames0"]
            entry["seconds"] = round(now - entry["since"], 2)

    def _counted(self) -> int:
        return self._handed_over + len(self._uncommitted)

    def _use_detector(self, detector: Detector) -> None:
        """Swap the loop's detector (between ticks; served batches wait on the lock) and close the old one."""
        with self.detector_lock:
            old, self.detector = self.detector, detector
            old.close()
        self.health.reset_inference()  # the latencies in the window were the old detector's

    def _drain(self) -> int:
        """Wait for the controller to acknowledge everything, up to the drain timeout; the records left."""
        deadline = time.monotonic() + self.options.drain_timeout
        left = self.outbox.depth()
        while left and time.monotonic() < deadline and self.link.fatal is None:
            time.sleep(0.05)
            left = self.outbox.depth()
        self._outbox_depth = left
        return left

    def plan_now(self) -> dict:
        """The plan the loop runs now, with its detect interval (for --metrics-listen; any thread)."""
        return {"detect_interval": self.options.detect_interval, **self.plan}

    def summary(self, result: RunResult) -> dict:
        """What `edge-agent run` prints at the end (JSON)."""
        summary = {
            "device_id": self.link.identity.device_id if self.link.identity else None,
            "streams": {s.stream_id: s.frames for s in self.streams},
            "frames": result.frames, "detections": result.detections,
            "seconds": round(result.seconds, 2), "fps": round(result.fps, 2),
            "inference_ms_p50": round(result.inference_ms_p50, 2),
            "acked_sequence": self.link.acked_sequence, "outbox_left": result.outbox_left,
            "outbox_dropped": self.outbox.dropped,
        }
        if self.mqtt is not None:
            summary["mqtt"] = {"published": self.mqtt.counters.published, "dropped": self.mqtt.counters.dropped}
        if self.adaptation is not None:
            summary["rung"] = self.adaptation.controller.rung.label()
            summary["controller_events"] = [{"direction": e.direction, "cause": e.cause, "to": e.rung.label(),
                                             "changes": list(e.changes), "reason": e.reason} for e in self.events]
            summary["rungs"] = [{"rung": r["rung"], "frames": r["frames"], "seconds": r["seconds"],
                                 "fps": round(r["frames"] / r["seconds"], 2) if r["seconds"] else 0.0}
                                for r in self.rung_history]
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


def _default_load(path: Path) -> Detector:
    from edgefleet.models import load_detector

    return load_detector(path, confidence_threshold=ByteTrackConfig().low_confidence_threshold)
