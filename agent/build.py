"""`build_agent(config)`: the one place an AgentConfig becomes a running agent's parts, for
`edge-agent run` and `edge-agent serve` alike.

It checks what needs the disk (the model file, the sources, the TLS files), probes the device,
picks the engine (a deployed one from active.json, else --model, else the bundled model), plans
(fixed, or --auto-plan with the runtime controller), and builds the agent; for `serve`, the
inference service's core, fed by the agent's detector, whose streams join the agent's. A `serve`
without a controller gets the core alone, on its own detector and health counters.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from edgefleet.adaptive.plan import DevicePlan, PlanReport, detector_fields

from .config import AgentConfig
from .errors import ConfigError

if TYPE_CHECKING:
    from edgefleet.adaptive.probe import HardwareProfile
    from edgefleet.models.base import Detector

    from .desired import DesiredConfig
    from .engines import ActiveEngines, EngineRef
    from .inference import InferenceCore
    from .loop import FeedContext
    from .options import Adaptation
    from .sources import Source
    from .supervisor import Agent

logger = logging.getLogger(__name__)

DEFAULT_PLAN_SOURCE = Path("var/samples/vtest.avi")
SYNTHETIC_PLAN_SOURCE = "synthetic://640x480?objects=5"


@dataclass
class BuiltAgent:
    """What build_agent made: the agent (None: a `serve` without a controller), the served
    streams' core (`serve`), and the metrics endpoint (--metrics-listen); `close()` after the run."""
    agent: Agent | None
    core: InferenceCore | None
    detector: Detector
    metrics: Any = None

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
        if self.agent is None:
            self.detector.close()


def build_agent(config: AgentConfig, *, source_factory: Callable[[str], Source] | None = None,
                profile: HardwareProfile | None = None) -> BuiltAgent:
    """The agent of `config` (validated: agent.flags.parse_args or AgentConfig(...)), not started."""
    from edgefleet.adaptive.probe import probe

    from .sources import open_source

    desired = _desired(config, source_factory or open_source) if config.controller is not None else None
    config = desired.current if desired is not None else config
    if config.model is not None and not config.model.is_file():
        raise ConfigError(f"--model {config.model}: no such file")
    source_factory = source_factory or functools.partial(open_source, pace=config.pace, folder_fps=config.folder_fps)
    for spec in config.source or []:
        source_factory(spec)  # fail on a bad source before loading the model
    if config.controller is None:
        return _service_only(config)
    profile = profile or probe()
    cores: list[InferenceCore] = []  # serve: the served streams, one of the agent's feeds
    agent = _agent(config, profile, source_factory, cores, desired)
    metrics = _metrics(config, agent.health_dict, lambda: dataclasses.asdict(agent.plan))
    return BuiltAgent(agent, cores[0] if cores else None, agent.detector, metrics)


def _agent(config: AgentConfig, profile: HardwareProfile, source_factory: Callable[[str], Source],
           cores: list[InferenceCore], desired: DesiredConfig | None = None) -> Agent:
    from .options import RunOptions
    from .supervisor import Agent

    credentials = (channel_credentials(config.tls_ca, config.tls_cert, config.tls_key)
                   if config.tls_ca or config.tls_cert or config.tls_key else None)
    options = RunOptions.from_config(config, credentials)
    active, engine = _active_engine(config)
    adaptation = None
    if config.auto_plan:
        adaptation, detector, plan = _auto_plan(config, profile, engine)
    else:
        batch = config.max_batch if config.serving else len(options.sources)
        note = "serving InferenceService" if config.serving else "adaptive planning not enabled"
        detector, plan = _fixed_plan(config, engine, batch, note)
    if engine is not None:  # the deployed artifact's sha256 (a bundle's is its tar's, not its model file's)
        plan = dataclasses.replace(plan, artifact_sha256=engine.sha256)
    return Agent(options, detector, source_factory, profile, plan, adaptation=adaptation,
                 mqtt=_mqtt_publisher(config), load_model=lambda path: load_detector(path, config), active=active,
                 feeds=[lambda context: _served(config, context, cores)] if config.serving else (), desired=desired)


def _desired(config: AgentConfig, source_factory: Callable[[str], Source]) -> DesiredConfig:
    """The controller's document kept in the state dir, over `config` (file and flags). One whose
    sources or model fail on this device now is refused, and the agent starts on its own config:
    a document must never keep a device from reaching the controller that can send a better one."""
    from .desired import DesiredConfig
    from .errors import SourceError

    desired = DesiredConfig.at_start(config, _config_detector)
    if desired.current is not config:
        try:
            if desired.current.model is not None and not desired.current.model.is_file():
                raise ConfigError(f"model {desired.current.model}: no such file")
            for spec in desired.current.source or []:
                source_factory(spec)
        except (ConfigError, SourceError) as err:
            desired.fall_back(str(err))
    return desired


def _config_detector(config: AgentConfig) -> Detector:
    """The detector a config names (--model, else the bundled one), for a document that changes it."""
    from edgefleet.models.bundled import default_model
    from edgefleet.models.errors import ModelError

    try:
        return load_detector(config.model or default_model(config.models_dir), config)
    except ModelError as err:
        raise ConfigError(f"model: {err}") from err


def _served(config: AgentConfig, context: FeedContext, cores: list[InferenceCore]) -> InferenceCore:
    """The inference service's streams as the agent's feed (its detector, health, schedules, outbox)."""
    from .batcher import BatchConfig
    from .inference import InferenceCore

    core = InferenceCore.feed(context, BatchConfig(config.max_batch, config.batch_window_ms / 1000,
                                                   config.stream_queue), max_frame_bytes=config.max_frame_bytes)
    cores.append(core)
    return core


def _service_only(config: AgentConfig) -> BuiltAgent:
    """`serve` without a controller: the inference service on its own detector, answering clients only."""
    from edgefleet.adaptive.schedule import FrameScheduler

    from .batcher import BatchConfig
    from .health import HealthMonitor
    from .inference import InferenceCore, standalone_detect

    detector, plan = _fixed_plan(config, None, config.max_batch, "serving InferenceService")
    health = HealthMonitor()
    batch = BatchConfig(config.max_batch, config.batch_window_ms / 1000, config.stream_queue)
    core = InferenceCore(standalone_detect(detector, health), lambda: detector.names, batch,
                         max_frame_bytes=config.max_frame_bytes, health=health,
                         scheduler_factory=lambda: FrameScheduler(config.detect_interval))
    metrics = _metrics(config, lambda: dataclasses.asdict(health.sample(frames_dropped=core.dropped_total())),
                       lambda: dataclasses.asdict(plan))
    return BuiltAgent(None, core, detector, metrics)


# ---- detectors and plans ----

THREADS_OPTION = {"onnxruntime": "intra_op_threads", "openvino": "threads", "ncnn": "threads"}
"""Each CPU backend's name for `--threads` (its config field)."""


def load_detector(path: str | Path, config: AgentConfig, input_size: tuple[int, int] | None = None) -> Detector:
    """A detector with the config's backend options. It keeps boxes down to ByteTrack's low
    threshold, so the tracker's second association sees them (RunOptions.publish_threshold keeps
    them out of the outbox)."""
    from edgefleet.models import BACKEND_BY_SUFFIX
    from edgefleet.models import load_detector as load
    from edgefleet.models.errors import ModelError

    from .bytetrack import ByteTrackConfig

    backend = BACKEND_BY_SUFFIX.get(Path(path).suffix.lower())
    options: dict[str, Any] = {"confidence_threshold": ByteTrackConfig().low_confidence_threshold}
    if config.threads is not None and backend in THREADS_OPTION:  # GPU engines have no thread count
        options[THREADS_OPTION[backend]] = config.threads
    if input_size is not None:
        options["input_size"] = input_size
    if config.rect and backend in ("onnxruntime", "openvino"):
        options["rect"] = True  # other backends run their engine's full input size
    try:
        return load(path, **options)
    except ModelError as err:
        raise ConfigError(f"model {path}: {err}") from err


def sample_frames(spec: str, count: int) -> list:
    """Up to `count` frames from the start of a source, to calibrate on."""
    from .sources import open_source

    source = open_source(spec)
    source.start()
    frames: list[Any] = []
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


def make_plan(profile: HardwareProfile, *, models: list[Path], source: str | None, calibrate: bool, frames: int,
              target_fps: float, streams: int, state_dir: Path, min_agreement: float = 0.95) -> PlanReport:
    """probe -> artifacts -> frames -> adaptive.plan.plan; a PlanError becomes a ConfigError."""
    from edgefleet.adaptive.artifacts import discover_artifacts
    from edgefleet.adaptive.errors import PlanError
    from edgefleet.adaptive.plan import PlanOptions, plan

    try:
        options = PlanOptions(target_fps=target_fps, streams=streams, calibrate=calibrate, min_agreement=min_agreement)
        artifacts, rejected = discover_artifacts(models, profile)
        images = []
        if calibrate and frames > 0:
            if source is None:
                source = str(DEFAULT_PLAN_SOURCE) if DEFAULT_PLAN_SOURCE.is_file() else SYNTHETIC_PLAN_SOURCE
            images = sample_frames(source, frames)
        state_dir.mkdir(parents=True, exist_ok=True)
        return plan(profile, artifacts, images, options, rejected=rejected,
                    cache_path=state_dir / "calibration.json")
    except PlanError as err:
        raise ConfigError(f"plan: {err}") from err


def model_candidates(models_dir: Path | None, model: Path | None) -> list[Path]:
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


def _active_engine(config: AgentConfig) -> tuple[ActiveEngines, EngineRef | None]:
    """The engines' state (active.json) after counting this start: the deployed engine to start with
    (None: --model or the bundled one). An engine whose file is gone or altered is rolled back at once;
    one that fails to load exits the agent, and the crash-loop rule rolls it back on the third start."""
    from edgefleet.models.errors import ModelError
    from edgefleet.models.manifest import manifest_path, verify_artifact

    from .engines import ActiveEngines, DeploymentStatus

    active = ActiveEngines(config.state_dir / "engines" / "active.json", config.engine_confirm_s)
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


def _auto_plan(config: AgentConfig, profile: HardwareProfile,
               engine: EngineRef | None) -> tuple[Adaptation, Detector, DevicePlan]:
    """Plan for this device, load the plan's detector, and the runtime controller over its ladder.
    With a deployed engine (`engine`, from active.json), it is the only model the ladder uses."""
    from edgefleet.adaptive.plan import make_controller
    from edgefleet.adaptive.readers import hottest_c, read_thermal_zones

    from .options import Adaptation

    model = Path(engine.path) if engine is not None else config.model
    sources = config.source or []
    report = make_plan(profile, models=model_candidates(config.models_dir, model),
                       source=sources[0] if sources else None, calibrate=config.calibrate, frames=5,
                       target_fps=config.target_fps, streams=max(1, len(sources)), state_dir=config.state_dir,
                       min_agreement=config.min_agreement)
    chosen = report.plan
    logger.info("plan: %s (%s %s) %dx%d, detect every %d: %s", chosen.model, chosen.backend, chosen.precision,
                chosen.input_width, chosen.input_height, chosen.detect_interval, chosen.reason)
    controller = make_controller(report)
    detector = load_detector(chosen.model_path, config, (chosen.input_width, chosen.input_height))
    adaptation = Adaptation(
        controller, lambda rung: load_detector(rung.model_path, config, rung.input_size),
        temperature=lambda: hottest_c(read_thermal_zones()),
    )
    return adaptation, detector, chosen.device_plan()


def _fixed_plan(config: AgentConfig, engine: EngineRef | None, batch: int,
                note: str) -> tuple[Detector, DevicePlan]:
    """The detector and plan without adaptive planning: the deployed engine, else --model, else the
    bundled one; `note` ends the plan's reason."""
    from edgefleet.models.bundled import default_model
    from edgefleet.models.errors import ModelError

    try:
        model = engine.path if engine else config.model or default_model(config.models_dir)
    except ModelError as err:
        raise ConfigError(f"model: {err}") from err
    detector = load_detector(model, config)
    why = f"rollout {engine.rollout_id}" if engine else "--model" if config.model else "default model"
    return detector, DevicePlan(model=engine.name if engine else Path(model).stem,
                                **detector_fields(detector, model), batch=batch,
                                detect_interval=config.detect_interval, reason=f"{why}; {note}")


def channel_credentials(ca: Path | None, cert: Path | None, key: Path | None) -> grpc.ChannelCredentials:
    """TLS to the controller: trust `ca` (None: the system's roots); `cert` + `key` for mutual TLS
    (AgentConfig refuses one without the other)."""
    def read(path: Path | None, flag: str) -> bytes | None:
        try:
            return path.read_bytes() if path else None
        except OSError as err:
            raise ConfigError(f"{flag} {path}: {err.strerror}") from err

    return grpc.ssl_channel_credentials(read(ca, "--tls-ca"), read(key, "--tls-key"), read(cert, "--tls-cert"))


# ---- reporting besides the controller ----

def _mqtt_publisher(config: AgentConfig):
    """The --mqtt publisher (agent.mqtt), or None."""
    if config.mqtt_address is None:
        return None
    from edgefleet.common.mqtt import MqttLogin, MqttSettingsError

    from .mqtt import MqttPublisher

    try:
        login = MqttLogin.from_settings(config.mqtt_username, config.mqtt_password_file, config.mqtt_tls_ca,
                                        config.mqtt_tls_cert, config.mqtt_tls_key)
    except MqttSettingsError as err:
        raise ConfigError(str(err)) from err
    return MqttPublisher(*config.mqtt_address, topic_prefix=config.mqtt_prefix, login=login)


def _metrics(config: AgentConfig, health: Callable[[], dict], plan: Callable[[], dict]):
    """`GET /metrics` on --metrics-listen (None without it), from a health sample and the plan."""
    if not config.metrics_listen:
        return None
    from .metrics import serve_metrics

    try:
        return serve_metrics(config.metrics_listen, health, plan)
    except OSError as err:
        raise ConfigError(f"--metrics-listen {config.metrics_listen}: {err}") from err
