"""`edge-agent`: the device daemon."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from edgefleet.common.addresses import host_port_arg

from .errors import AgentError, ConfigError

logger = logging.getLogger("edge_agent")


def _mqtt_prefix(value: str) -> str:
    prefix = value.strip("/")
    if not prefix or any(c in prefix for c in "+#"):
        raise argparse.ArgumentTypeError(f"must be a non-empty topic without + or #, got {value!r}")
    return prefix


def cmd_probe(args) -> int:
    from edgefleet.adaptive.probe import probe

    profile = probe(args.root)
    if args.json:
        print(json.dumps(profile.to_dict(), indent=2))
    else:
        for key, value in profile.to_dict().items():
            print(f"{key:>22}: {value}")
    return 0


DEFAULT_PLAN_SOURCE = Path("var/samples/vtest.avi")
SYNTHETIC_PLAN_SOURCE = "synthetic://640x480?objects=5"


def _detector_options(args) -> dict:
    """Backend options from the flags. The detector keeps boxes down to ByteTrack's low threshold,
    so the tracker's second association sees them (RunOptions.publish_threshold keeps them out
    of the outbox)."""
    from .bytetrack import ByteTrackConfig

    options = {"confidence_threshold": ByteTrackConfig().low_confidence_threshold}
    if args.threads is not None:
        options["intra_op_threads"] = args.threads
    return options


def _load_detector(path, args, input_size: tuple[int, int] | None = None):
    from edgefleet.models import BACKEND_BY_SUFFIX, load_detector
    from edgefleet.models.errors import ModelError

    options = _detector_options(args)
    if input_size is not None:
        options["input_size"] = input_size
    if args.rect and BACKEND_BY_SUFFIX.get(Path(path).suffix.lower()) == "onnxruntime":
        options["rect"] = True  # other backends run their engine's full input size
    try:
        return load_detector(path, **options)
    except ModelError as err:
        raise ConfigError(f"model {path}: {err}") from err


def _sample_frames(spec: str, count: int) -> list:
    """Up to `count` frames from the start of a source, to calibrate on."""
    from .sources import open_source

    source = open_source(spec)
    source.start()
    frames = []
    try:
        while len(frames) < count:
            frame = source.read(timeout=10)
            if frame is None:
                break
            frames.append(frame.image)
    except TimeoutError:
        logger.warning("source %s gave %d of %d calibration frames", spec, len(frames), count)
    finally:
        source.stop()
    return frames


def _make_plan(profile, *, models: list[Path], source: str | None, calibrate: bool, frames: int,
               target_fps: float, streams: int, state_dir: Path):
    """probe -> artifacts -> frames -> adaptive.plan.plan; a PlanError becomes a ConfigError."""
    from edgefleet.adaptive.artifacts import discover_artifacts
    from edgefleet.adaptive.errors import PlanError
    from edgefleet.adaptive.plan import PlanOptions, plan

    try:
        options = PlanOptions(target_fps=target_fps, streams=streams, calibrate=calibrate)
        artifacts, rejected = discover_artifacts(models, profile)
        images = []
        if calibrate and frames > 0:
            if source is None:
                source = str(DEFAULT_PLAN_SOURCE) if DEFAULT_PLAN_SOURCE.is_file() else SYNTHETIC_PLAN_SOURCE
            images = _sample_frames(source, frames)
        state_dir.mkdir(parents=True, exist_ok=True)
        return plan(profile, artifacts, images, options, rejected=rejected,
                    cache_path=state_dir / "calibration.json")
    except PlanError as err:
        raise ConfigError(f"plan: {err}") from err


def _model_candidates(models_dir: Path | None, model: Path | None) -> list[Path]:
    """--model alone when given; else every artifact in the models dir and the bundled model."""
    from edgefleet.models.bundled import default_cache_dir, default_model
    from edgefleet.models.errors import ModelError

    if model is not None:
        return [model]
    folder = models_dir or default_cache_dir()
    try:
        bundled = default_model(models_dir)
    except ModelError as err:
        raise ConfigError(f"bundled model: {err}") from err
    return ([folder] if folder.is_dir() else []) + [bundled]


def cmd_plan(args) -> int:
    from edgefleet.adaptive.plan import format_plan_report
    from edgefleet.adaptive.probe import probe

    report = _make_plan(probe(), models=_model_candidates(args.models_dir, None), source=args.source,
                        calibrate=args.calibrate, frames=args.frames, target_fps=args.target_fps,
                        streams=args.streams, state_dir=args.state_dir)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_plan_report(report))
    return 0


def cmd_run(args) -> int:
    from edgefleet.adaptive.probe import probe

    from .link import channel_credentials
    from .options import RunOptions
    from .runner import Agent
    from .sources import open_source

    if args.model is not None and not args.model.is_file():
        raise ConfigError(f"--model {args.model}: no such file")
    options = RunOptions(
        controller=args.controller, sources=args.source, state_dir=args.state_dir,
        enroll_key=args.enroll_key, name=args.name or "", stream_ids=args.stream_id or [],
        max_frames=args.max_frames, loop=args.loop, detect_interval=args.detect_interval,
        motion_threshold=args.motion_gate,
        drain_timeout_s=args.drain_timeout, gate_sample_every=args.gate_sample_every,
        engine_confirm_s=args.engine_confirm_s, fallback_model=args.model, download_mbps=args.download_mbps,
        backoff_max_s=args.backoff_max_s, outbox_max_bytes=int(args.outbox_max_mb * 1e6),
        outbox_max_age_s=args.outbox_max_age_s, commit_interval_s=args.commit_interval_s,
        credentials=(channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
                     if args.tls_ca or args.tls_cert or args.tls_key else None),
    )
    for spec in options.sources:
        open_source(spec)  # fail on a bad source before loading the model
    profile = probe()
    active, engine = _active_engine(args, options)
    adaptation = None
    if args.auto_plan:
        adaptation, detector, plan = _auto_plan(args, profile, options, engine)
    else:
        detector, plan = _fixed_plan(args, engine, len(options.sources), options.detect_interval,
                                     "adaptive planning not enabled")
    plan["artifact_sha256"] = engine.sha256 if engine else ""
    mqtt = _mqtt_publisher(args)
    agent = Agent(options, detector, open_source, profile.to_dict(), plan, adaptation=adaptation, mqtt=mqtt,
                  load_model=lambda path: _load_detector(path, args), active=active)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop_event.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stop_event.set())
    metrics = _agent_metrics(args, agent)
    try:
        result = agent.run()
    finally:
        if metrics is not None:
            metrics.stop()
    summary = {
        "device_id": agent.link.identity.device_id if agent.link.identity else None,
        "streams": {s.stream_id: s.frames for s in agent.streams},
        "frames": result.frames, "detections": result.detections,
        "seconds": round(result.seconds, 2), "fps": round(result.fps, 2),
        "inference_ms_p50": round(result.inference_ms_p50, 2),
        "acked_sequence": agent.link.acked_sequence, "outbox_left": result.outbox_left,
        "outbox_dropped": agent.outbox.dropped,
    }
    if mqtt is not None:
        summary["mqtt"] = {"published": mqtt.counters.published, "dropped": mqtt.counters.dropped}
    if adaptation is not None:
        summary["rung"] = adaptation.controller.rung.label()
        summary["controller_events"] = [{"direction": e.direction, "cause": e.cause, "to": e.rung.label(),
                                         "changes": list(e.changes), "reason": e.reason} for e in agent.events]
        summary["rungs"] = [{"rung": r["rung"], "frames": r["frames"], "seconds": r["seconds"],
                             "fps": round(r["frames"] / r["seconds"], 2) if r["seconds"] else 0.0}
                            for r in agent.rung_history]
    print(json.dumps(summary), flush=True)
    agent.check_delivered(result)  # after the summary: what ran is reported either way
    return 0


def _mqtt_publisher(args):
    """The --mqtt publisher (agent.mqtt), or None."""
    if not args.mqtt:
        return None
    from .mqtt import MqttPublisher

    return MqttPublisher(*args.mqtt, topic_prefix=args.mqtt_prefix)


def _agent_metrics(args, agent=None, health=None, plan: dict | None = None):
    """`GET /metrics` on --metrics-listen (None without it): an agent's, or a bare service's health and plan."""
    if not args.metrics_listen:
        return None
    from .metrics import serve_metrics

    if agent is not None:
        health, plan_of = agent.health_sample, lambda: {"detect_interval": agent.options.detect_interval, **agent.plan}
    else:
        plan_of = lambda: plan  # noqa: E731
    try:
        return serve_metrics(args.metrics_listen, health, plan_of)
    except OSError as err:
        raise ConfigError(f"--metrics-listen {args.metrics_listen}: {err}") from err


def _active_engine(args, options):
    """The engines' state (active.json) after counting this start: the deployed engine to start with
    (None: --model or the bundled one). An engine whose file is gone or altered is rolled back at once;
    one that fails to load exits the agent, and the crash-loop rule rolls it back on the third start."""
    from edgefleet.models.errors import ModelError
    from edgefleet.models.manifest import manifest_path, verify_artifact

    from .engines import ActiveEngines, DeploymentStatus

    active = ActiveEngines(options.state_dir / "engines" / "active.json", args.engine_confirm_s)
    active.on_start()  # the crash-loop rule: may go back to the previous engine
    while active.current is not None:
        engine = active.current
        try:
            if not Path(engine.path).is_file():
                raise ModelError(f"{engine.path} is missing")
            if manifest_path(Path(engine.path)).is_file():
                verify_artifact(Path(engine.path))  # size and sha256; a load failure counts as a crash
            return active, engine
        except ModelError as err:
            reason = f"engine {engine.name} no longer loads at start: {err}"
            active.fall_back(reason)
            active.startup_status = DeploymentStatus(engine.rollout_id, engine.sha256, "ROLLED_BACK", 1.0, reason)
    return active, None


def _auto_plan(args, profile, options, engine=None):
    """Plan for this device, load the plan's detector, and the runtime controller over its ladder.
    With a deployed engine (`engine`, from active.json), it is the only model the ladder uses."""
    if engine is not None:
        args.model = Path(engine.path)
    from edgefleet.adaptive.plan import make_controller
    from edgefleet.adaptive.probe import hottest_c, read_thermal_zones

    from .options import Adaptation

    report = _make_plan(profile, models=_model_candidates(args.models_dir, args.model),
                        source=options.sources[0], calibrate=args.calibrate, frames=5,
                        target_fps=args.target_fps, streams=len(options.sources), state_dir=args.state_dir)
    chosen = report.plan
    logger.info("plan: %s (%s %s) %dx%d, detect every %d: %s", chosen.model, chosen.backend, chosen.precision,
                chosen.input_width, chosen.input_height, chosen.detect_interval, chosen.reason)
    controller = make_controller(report)
    detector = _load_detector(chosen.model_path, args, (chosen.input_width, chosen.input_height))
    adaptation = Adaptation(
        controller, lambda rung: _load_detector(rung.model_path, args, rung.input_size),
        temperature=lambda: hottest_c(read_thermal_zones()),
    )
    return adaptation, detector, chosen.to_wire()


def _fixed_plan(args, engine, batch: int, detect_interval: int, note: str):
    """The detector and plan without adaptive planning: the deployed engine, else --model, else the
    bundled one; `note` ends the plan's reason."""
    from edgefleet.models.bundled import default_model
    from edgefleet.models.errors import ModelError

    try:
        model = engine.path if engine else args.model or default_model(args.models_dir)
    except ModelError as err:
        raise ConfigError(f"model: {err}") from err
    detector = _load_detector(model, args)
    w, h = detector.input_size
    why = f"rollout {engine.rollout_id}" if engine else "--model" if args.model else "default model"
    return detector, {"model": engine.name if engine else Path(model).stem,
                      "backend": type(detector).__module__.rsplit(".", 1)[-1], "input_width": w,
                      "input_height": h, "batch": batch, "detect_interval": detect_interval,
                      "reason": f"{why}; {note}"}


def cmd_serve(args) -> int:
    """The inference service (agent/inference.py), beside local sources or instead of them.

    With --controller, an Agent (as `run` builds it) owns the outbox, link and health; the served
    streams' records and counters join its own. Without, the service answers clients only."""
    import os
    import threading

    from edgefleet.adaptive.schedule import FrameScheduler

    from .batcher import BatchConfig
    from .health import HealthMonitor
    from .inference import InferenceCore, InferenceServer, standalone_detect

    if args.source and not args.controller:
        raise ConfigError("--source needs --controller (local streams report to a controller); "
                          "without one, serve only")
    if args.mqtt and not args.controller:
        raise ConfigError("--mqtt needs --controller (what goes to MQTT is what the agent stores and reports)")
    if args.model is not None and not args.model.is_file():
        raise ConfigError(f"--model {args.model}: no such file")
    batch = BatchConfig(args.max_batch, args.batch_window_ms / 1000, args.stream_queue)
    token = args.token or os.environ.get("EDGEFLEET_INFERENCE_TOKEN") or None
    agent = None
    if args.controller:
        from edgefleet.adaptive.probe import probe

        from .link import channel_credentials
        from .options import RunOptions
        from .runner import Agent
        from .sources import open_source

        options = RunOptions(
            controller=args.controller, sources=args.source or [], state_dir=args.state_dir,
            enroll_key=args.enroll_key, name=args.name or "", stream_ids=args.stream_id or [],
            loop=args.loop, detect_interval=args.detect_interval, drain_timeout_s=args.drain_timeout,
            engine_confirm_s=args.engine_confirm_s, fallback_model=args.model, serving=True,
            credentials=(channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
                         if args.tls_ca or args.tls_cert or args.tls_key else None),
        )
        for spec in options.sources:
            open_source(spec)  # fail on a bad source before loading the model
        active, engine = _active_engine(args, options)
        detector, plan = _fixed_plan(args, engine, args.max_batch, options.detect_interval, "serving InferenceService")
        plan["artifact_sha256"] = engine.sha256 if engine else ""
        agent = Agent(options, detector, open_source, probe().to_dict(), plan, mqtt=_mqtt_publisher(args),
                      load_model=lambda path: _load_detector(path, args), active=active)
        core = InferenceCore(agent.detect_served, lambda: agent.detector.names, batch,
                             max_frame_bytes=args.max_frame_bytes, health=agent.health,
                             scheduler_factory=agent.new_scheduler,  # the agent's plan changes reach them too
                             publish_threshold=options.publish_threshold, keep_records=True,
                             reserved=frozenset(options.stream_ids))
        agent.served = core
        metrics = _agent_metrics(args, agent)
    else:
        detector, plan = _fixed_plan(args, None, args.max_batch, args.detect_interval, "serving InferenceService")
        health = HealthMonitor()
        core = InferenceCore(standalone_detect(detector, health), lambda: detector.names, batch,
                             max_frame_bytes=args.max_frame_bytes, health=health,
                             scheduler_factory=lambda: FrameScheduler(args.detect_interval))
        metrics = _agent_metrics(args, health=lambda: health.sample(frames_dropped=core.dropped_total()),
                                 plan=plan)
    server = InferenceServer(core, args.listen, token)
    try:
        port = server.start()
    except OSError as err:
        if metrics is not None:
            metrics.stop()
        raise ConfigError(f"--listen {args.listen}: {err}") from err
    print(json.dumps({"serving": f"{args.listen.rpartition(':')[0]}:{port}"}), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def shutdown() -> None:
        stop.wait()
        server.stop(grace=args.grace)  # calls finish, their records reach the feed
        if agent is not None:
            agent.stop_event.set()  # then the agent commits them and drains

    stopper = threading.Thread(target=shutdown, name="serve-shutdown")
    stopper.start()
    summary: dict = {}
    result = None
    try:
        if agent is not None:
            result = agent.run()
            summary = {"device_id": agent.link.identity.device_id if agent.link.identity else None,
                       "frames": result.frames, "detections": result.detections,
                       "acked_sequence": agent.link.acked_sequence, "outbox_left": result.outbox_left}
        else:
            while not stop.wait(1.0):
                pass
    finally:
        stop.set()
        stopper.join()
        if metrics is not None:
            metrics.stop()
        if agent is None:
            detector.close()
    stats = core.batcher.stats
    summary.update(served_frames=core.frames_served, served_dropped=core.dropped_total(), batches=stats.batches,
                   mean_batch=round(stats.items / stats.batches, 2) if stats.batches else 0.0)
    print(json.dumps(summary), flush=True)
    if result is not None:
        agent.check_delivered(result)
    return 0


def _add_detector_flags(p: argparse.ArgumentParser) -> None:
    """The flags `run` and `serve` share about how the detector runs."""
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="inference threads (default: ONNX Runtime's choice, one per core)")
    p.add_argument("--rect", action="store_true",
                   help="rectangular inference (ONNX models): letterbox frames into the smallest multiple of 32 "
                        "that holds them, not the whole input square; 4:3 video runs at 416x320, about a quarter "
                        "faster, with slightly different scores")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="where converted models are cached (default $EDGEFLEET_CACHE/models or ~/.cache/edgefleet/models)")


def _add_reporting_flags(p: argparse.ArgumentParser, mqtt_note: str = "") -> None:
    """The flags `run` and `serve` share about what they report besides the controller."""
    p.add_argument("--metrics-listen", type=host_port_arg("--metrics-listen", allow_port_zero=True, as_text=True),
                   metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics while running (off by default)")
    p.add_argument("--mqtt", type=host_port_arg("--mqtt"), metavar="HOST:PORT",
                   help="also publish Frigate-style topics (availability, track events, label counts, stats) "
                        f"to this MQTT broker{mqtt_note}")
    p.add_argument("--mqtt-prefix", type=_mqtt_prefix, default="edgefleet", metavar="TOPIC",
                   help="topic prefix for --mqtt (default edgefleet)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description="edgefleet device agent")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="detect and track on a source, report to the controller")
    p.add_argument("--config", type=Path, metavar="YAML",
                   help="read flags from this YAML file (keys: the flags without dashes, plus `sources:`); "
                        "flags on the command line win")
    p.add_argument("--controller", required=True, type=host_port_arg("--controller", as_text=True), metavar="HOST:PORT")
    p.add_argument("--tls-ca", type=Path, metavar="PEM", help="dial the controller with TLS, trusting this CA")
    p.add_argument("--tls-cert", type=Path, metavar="PEM", help="this device's certificate, for mutual TLS")
    p.add_argument("--tls-key", type=Path, metavar="PEM", help="this device's private key, for mutual TLS")
    p.add_argument("--source", required=True, action="append",
                   help="video file, image folder, camera index (0), rtsp:// or http:// URL, or "
                        "synthetic://640x480?objects=5; repeat for several streams (batched into one detector call)")
    p.add_argument("--state-dir", type=Path, default=Path("var/agent"),
                   help="identity and the durable outbox live here (default var/agent)")
    p.add_argument("--enroll-key", help="enrollment key; needed on the first run only")
    p.add_argument("--name", help="name to enroll under (default: hostname)")
    p.add_argument("--stream-id", action="append",
                   help="id of each --source in reports, in the same order (default cam0, cam1, ...)")
    p.add_argument("--max-frames", type=int, default=0, metavar="N",
                   help="stop each stream after N frames (0: at the source's end)")
    p.add_argument("--detect-interval", type=int, default=1, metavar="N",
                   help="detect on every Nth frame of a stream; the tracker predicts in between (default 1)")
    p.add_argument("--motion-gate", type=float, default=0.0, metavar="T",
                   help="skip detection while the scene is static (mean pixel change below T of 255; "
                        "e.g. 2); 0 turns it off (default)")
    p.add_argument("--loop", action="store_true", help="restart a file source when it ends")
    p.add_argument("--drain-timeout", type=float, default=30.0, metavar="S",
                   help="at the end, wait up to S seconds for the controller to acknowledge everything")
    p.add_argument("--backoff-max-s", type=float, default=10.0, metavar="S",
                   help="while the controller is unreachable, retry with exponential backoff and jitter "
                        "up to S seconds apart (default 10)")
    p.add_argument("--outbox-max-mb", type=float, default=512.0, metavar="MB",
                   help="bound the outbox at MB megabytes of records; when full the oldest unacknowledged "
                        "records are dropped first, counted and reported (default 512; 0: no bound)")
    p.add_argument("--outbox-max-age-s", type=float, default=7 * 24 * 3600.0, metavar="S",
                   help="drop unacknowledged records captured more than S seconds ago, oldest first "
                        "(default 604800, 7 days; 0: keep them however old)")
    p.add_argument("--commit-interval-s", type=float, default=0.25, metavar="S",
                   help="commit detections to the outbox (one fsync) and send them in groups every S "
                        "seconds (default 0.25): shorter reaches the controller and MQTT sooner, longer "
                        "costs less CPU, I/O and flash wear; a crash loses at most the last S seconds")
    _add_detector_flags(p)
    p.add_argument("--model", type=Path, default=None, metavar="FILE",
                   help="model file to detect with (.onnx, .engine, .pt; default: the bundled model); "
                        "with --auto-plan, the only candidate")
    p.add_argument("--auto-plan", action="store_true",
                   help="plan model, input size and detect interval for this device (as `edge-agent plan`), "
                        "then adapt them at run time to measured latency, drops and temperature")
    p.add_argument("--target-fps", type=float, default=15.0, metavar="F",
                   help="with --auto-plan: frames per second per stream to sustain (default 15)")
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                   help="with --auto-plan: plan from the static table, without timing the models")
    p.add_argument("--gate-sample-every", type=int, default=5, metavar="N",
                   help="while a deployment is shadow-tested, every Nth detected frame also runs on the candidate "
                        "engine (default 5)")
    p.add_argument("--download-mbps", type=float, default=0.0, metavar="MB",
                   help="cap artifact downloads at MB megabytes per second, for metered or shared links "
                        "(default 0: no cap); an interrupted download resumes where it stopped")
    p.add_argument("--engine-confirm-s", type=float, default=60.0, metavar="S",
                   help="a deployed engine counts as healthy after S seconds of running; 3 starts in a row "
                        "without that roll it back (default 60)")
    _add_reporting_flags(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("plan", help="choose model, input size and detect interval for this device")
    p.add_argument("--json", action="store_true")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="model artifacts (with their manifests) to consider besides the bundled model "
                        "(default $EDGEFLEET_CACHE/models or ~/.cache/edgefleet/models)")
    p.add_argument("--source", default=None,
                   help=f"source to calibrate on (default {DEFAULT_PLAN_SOURCE} if present, else synthetic frames)")
    p.add_argument("--frames", type=int, default=5, metavar="N", help="frames to calibrate on (default 5)")
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                   help="plan from the static table, without timing the models")
    p.add_argument("--target-fps", type=float, default=15.0, metavar="F",
                   help="frames per second per stream to sustain (default 15)")
    p.add_argument("--streams", type=int, default=1, metavar="N", help="streams batched per detector call (default 1)")
    p.add_argument("--state-dir", type=Path, default=Path("var/agent"),
                   help="the calibration cache (calibration.json) lives here (default var/agent)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("probe", help="print what the agent knows about this machine")
    p.add_argument("--json", action="store_true")
    p.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("serve", help="serve edgefleet.v1.InferenceService (Detect, DetectStream) with this "
                                     "device's detector, beside or instead of local sources")
    p.add_argument("--listen", required=True, type=host_port_arg("--listen", allow_port_zero=True, as_text=True),
                   metavar="HOST:PORT", help="where clients call (port 0 picks one; the first stdout line names it)")
    p.add_argument("--controller", type=host_port_arg("--controller", as_text=True), metavar="HOST:PORT",
                   help="also report served (and --source) streams to this controller, as `run` does")
    p.add_argument("--source", action="append", help="local sources beside the served streams (needs --controller)")
    p.add_argument("--stream-id", action="append", help="id of each --source (default cam0, cam1, ...)")
    p.add_argument("--loop", action="store_true", help="restart a file --source when it ends")
    p.add_argument("--token", default=None, metavar="T",
                   help="require 'authorization: Bearer T' on every call (default $EDGEFLEET_INFERENCE_TOKEN; "
                        "none: open)")
    p.add_argument("--max-batch", type=int, default=8, metavar="N",
                   help="frames per detector call at most, across all clients (default 8)")
    p.add_argument("--batch-window-ms", type=float, default=5.0, metavar="MS",
                   help="how long a waiting frame waits for others to fill its batch (default 5)")
    p.add_argument("--stream-queue", type=int, default=2, metavar="N",
                   help="frames of one stream waiting for the detector before its oldest is dropped (default 2)")
    p.add_argument("--max-frame-bytes", type=int, default=8 << 20, metavar="B",
                   help="largest image payload accepted (encoded bytes or raw pixels; default 8 MiB)")
    p.add_argument("--detect-interval", type=int, default=1, metavar="N",
                   help="detect on every Nth frame of a stream; the tracker predicts in between (default 1)")
    p.add_argument("--grace", type=float, default=2.0, metavar="S",
                   help="on SIGTERM/SIGINT, let open calls finish for up to S seconds (default 2)")
    p.add_argument("--state-dir", type=Path, default=Path("var/agent"),
                   help="with --controller: identity and the durable outbox (default var/agent)")
    p.add_argument("--enroll-key", help="with --controller: enrollment key; needed on the first run only")
    p.add_argument("--name", help="name to enroll under (default: hostname)")
    p.add_argument("--tls-ca", type=Path, metavar="PEM", help="dial the controller with TLS, trusting this CA")
    p.add_argument("--tls-cert", type=Path, metavar="PEM", help="this device's certificate, for mutual TLS")
    p.add_argument("--tls-key", type=Path, metavar="PEM", help="this device's private key, for mutual TLS")
    p.add_argument("--drain-timeout", type=float, default=30.0, metavar="S",
                   help="with --controller, at the end: wait up to S seconds for acknowledgements")
    p.add_argument("--engine-confirm-s", type=float, default=60.0, metavar="S", help=argparse.SUPPRESS)
    _add_detector_flags(p)
    p.add_argument("--model", type=Path, default=None, metavar="FILE",
                   help="model file to detect with (.onnx, .engine, .pt; default: the bundled model)")
    _add_reporting_flags(p, mqtt_note=" (needs --controller)")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .config import parse_args

    args = parse_args(build_parser(), argv)  # with `run --config FILE`: the file's values as defaults
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.func(args)
    except AgentError as err:
        print(f"edge-agent: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
