"""The controller's desired configuration on the device: check it, keep it, say what it changes.

The controller sends a versioned YAML document whose keys are agent.yaml's (agent.config_file),
checked by the same AgentConfig validator as the file and the flags. Precedence: the model's
defaults < agent.yaml < command-line flags < the controller's document, except the device-only
settings (`DEVICE_ONLY`: how to reach and trust the controller, where the state lives, secrets),
which a document may not set: a fleet-wide document must not cut a device off its controller.

A document that fails is refused with every reason and changes nothing. One that passes is
written atomically to `<state_dir>/desired.yaml` (temp file, fsync, rename, fsync of the folder),
so that the next start runs it too, and applied: `LIVE` settings between two ticks, `LOOP`
settings by restarting the frame loop (the outbox, the link and the recorder stay up, so the
sequence numbers continue), and the rest at the agent's next start (`how` says which). An empty
document means "back to agent.yaml and the flags".
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import yaml
from pydantic import TypeAdapter, ValidationError

from .config import AgentConfig
from .config_file import ConfigFileError, FileValues, read_config_text
from .errors import AgentError, ConfigError
from .flags import GROUPS, file_keys, refusal

if TYPE_CHECKING:
    from edgefleet.models.base import Detector

    from .supervisor import Agent

logger = logging.getLogger(__name__)

DESIRED_FILE = "desired.yaml"

DEVICE_ONLY: dict[str, str] = {
    "controller": "the controller's address is the device's own (a wrong one would cut it off)",
    "tls_ca": "TLS files are the device's own", "tls_cert": "TLS files are the device's own",
    "tls_key": "TLS files are the device's own",
    "state_dir": "the state dir holds the device's identity and outbox",
    "enroll_key": "secrets stay on the device", "token": "secrets stay on the device",
    "name": "the name is used only at enrollment",
    "listen": "the inference service's address is the device's own",
}
"""Settings only the device sets (agent.yaml or flags), with why a document may not."""

LIVE = ("detect_interval", "motion_gate")
"""Settings the loop takes between two ticks."""
LOOP = ("source", "stream_id", "max_frames", "loop", "model", "threads", "rect", "models_dir", "analytics")
"""Settings that need a new frame loop (sources, trackers, detector); the outbox and link stay up."""


def device_only(name: str) -> str | None:
    """Why the document may not set `name` (None: it may). MQTT passwords and TLS files too."""
    if name in DEVICE_ONLY:
        return DEVICE_ONLY[name]
    if "password" in name or name.startswith(("tls_", "mqtt_tls")):
        return "secrets and TLS files stay on the device"
    return None


class DesiredConfigError(ConfigError):
    """A document the agent refuses; `errors` are all the reasons, each naming the key."""

    def __init__(self, errors: list[str]):
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class ApplyConfig:
    """The controller's document (edgefleet.v1.ApplyConfig)."""
    command_id: str
    version: int
    document: str


@dataclass(frozen=True)
class ConfigStatus:
    """Which document the agent runs (edgefleet.v1.ConfigStatus): sent in the hello and after each ApplyConfig."""
    applied_version: int = 0
    refused_version: int = 0
    errors: tuple[str, ...] = ()
    applied_document: str = ""
    how: str = ""


@dataclass(frozen=True)
class Change:
    """What a document changes against the config the agent runs: the new config, and the changed
    settings by how they take effect."""
    config: AgentConfig
    live: tuple[str, ...] = ()
    loop: tuple[str, ...] = ()
    next_start: tuple[str, ...] = ()

    @property
    def how(self) -> str:
        """`live`, `loop restarted`, `unchanged`, with `; at next start: KEYS` when some wait for it."""
        how = "loop restarted" if self.loop else "live" if self.live else "unchanged"
        later = ", ".join(name.replace("_", "-") for name in self.next_start)  # as agent.yaml spells them
        return how + (f"; at next start: {later}" if later else "")


def document_keys() -> dict[str, Any]:
    """The keys a document may name: every setting of run and serve (device-only ones are refused later)."""
    return file_keys([name for names in GROUPS.values() for name in names])


def read_document(version: int, document: str, origin: str = "") -> FileValues:
    """The document's settings; DesiredConfigError with every key it may not set, or its YAML mistake.
    Messages start with `origin` (default `desired config vN`), the line and the key."""
    try:
        values = read_config_text(Path(origin or f"desired config v{version}"), document, document_keys())
    except ConfigFileError as err:
        raise DesiredConfigError([str(err)]) from err
    refused = [f"{values.locate(name)}: set on the device only: {why}"
               for name in values.values if (why := device_only(name)) is not None]
    if refused:
        raise DesiredConfigError(refused)
    return values


def check_document(document: str) -> list[str]:
    """What can be said of a document without the device's own config (the controller checks this
    before it stores one): YAML, keys, device-only keys, each value's type and bounds. Settings
    that conflict with the device's file or flags are the device's to refuse. [] when none."""
    try:
        values = read_document(0, document, origin="document")
    except DesiredConfigError as err:
        return err.errors
    errors = []
    for name, value in values.values.items():
        info = AgentConfig.model_fields[name]
        try:  # strict: "5" is no number; a mapping (analytics) is checked by its own models, points as lists
            TypeAdapter(cast(Any, Annotated[info.annotation, info])).validate_python(
                value, strict=not isinstance(value, dict))
        except ValidationError as err:
            errors.append(str(refusal(err.errors()[0] | {"loc": (name,)}, values, set())))
    return errors


def merge(base: AgentConfig, values: FileValues) -> AgentConfig:
    """`values` over what `base` was given (file and flags); the defaults under both."""
    given: dict[str, Any] = {name: getattr(base, name) for name in base.model_fields_set}
    if "source" in values.values and "stream_id" not in values.values:
        given.pop("stream_id", None)  # the document's streams replace the device's, ids and all
    given.update(values.values)
    try:
        return AgentConfig.model_validate(given)
    except ValidationError as err:
        raise DesiredConfigError([str(refusal(e, values, set())) for e in err.errors()]) from err


def changes(old: AgentConfig, new: AgentConfig) -> Change:
    """The settings whose values differ, by how each takes effect."""
    changed = [name for name in AgentConfig.model_fields if getattr(old, name) != getattr(new, name)]
    return Change(new, tuple(n for n in changed if n in LIVE), tuple(n for n in changed if n in LOOP),
                  tuple(n for n in changed if n not in LIVE and n not in LOOP))


class DesiredStore:
    """`<state_dir>/desired.yaml`: the applied document and its version, replaced atomically."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / DESIRED_FILE

    def load(self) -> tuple[int, str] | None:
        """(version, document), or None when there is none; a damaged file is logged and ignored."""
        try:
            data = yaml.safe_load(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            logger.warning("%s cannot be read (%s): running agent.yaml and the flags", self.path, err)
            return None
        if not isinstance(data, dict) or not isinstance(data.get("version"), int) \
                or not isinstance(data.get("document"), str):
            logger.warning("%s is not a desired configuration (version, document): ignored", self.path)
            return None
        return data["version"], data["document"]

    def save(self, version: int, document: str) -> None:
        """Write it whole or not at all: a crash leaves the old file or the new one, never a mix."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump({"version": version, "document": document}, sort_keys=False)
        fd, tmp = tempfile.mkstemp(prefix=".desired-", suffix=".yaml", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself survives a power cut
        finally:
            os.close(folder)


@dataclass
class DesiredConfig:
    """The device's side of its twin: the config from file and flags (`base`), the one it runs
    (`current`), and its ConfigStatus. Used on the loop thread only (the link reads `status`)."""
    base: AgentConfig
    store: DesiredStore
    current: AgentConfig = field(init=False)
    status: ConfigStatus = field(default_factory=ConfigStatus)
    load_detector: Callable[[AgentConfig], Detector] | None = None
    """The detector of a config (agent.build): a document that changes the model loads it."""

    def __post_init__(self) -> None:
        self.current = self.base

    @classmethod
    def at_start(cls, base: AgentConfig,
                 load_detector: Callable[[AgentConfig], Detector] | None = None) -> DesiredConfig:
        """The persisted document over `base`, when it still passes (a changed agent.yaml may now
        conflict with it: then it is refused and the agent runs its file and flags)."""
        desired = cls(base, DesiredStore(base.state_dir), load_detector=load_detector)
        saved = desired.store.load()
        if saved is None:
            return desired
        version, document = saved
        try:
            desired.current = merge(base, read_document(version, document))
        except DesiredConfigError as err:
            logger.warning("desired config v%d no longer applies: %s", version, err)
            desired.status = ConfigStatus(refused_version=version, errors=tuple(err.errors))
            return desired
        desired.status = ConfigStatus(version, applied_document=document, how="at start")
        logger.info("running desired config v%d over agent.yaml and the flags", version)
        return desired

    def fall_back(self, reason: str) -> None:
        """The persisted document cannot run here (a source or model missing now): run file and flags."""
        logger.warning("desired config v%d cannot start here (%s): running agent.yaml and the flags",
                       self.status.applied_version, reason)
        self.status = ConfigStatus(refused_version=self.status.applied_version,
                                   errors=(f"desired config v{self.status.applied_version}: {reason}",))
        self.current = self.base

    def prepare(self, command: ApplyConfig) -> Change:
        """What the document would change; DesiredConfigError when it is refused (nothing changes)."""
        return changes(self.current, merge(self.base, read_document(command.version, command.document)))

    def applied(self, command: ApplyConfig, change: Change) -> ConfigStatus:
        """Persist the document and run its config from now on; the status to report."""
        self.store.save(command.version, command.document)
        self.current = change.config
        self.status = replace(self.status, applied_version=command.version, applied_document=command.document,
                              how=change.how)
        return self.status

    def refused(self, command: ApplyConfig, errors: list[str]) -> ConfigStatus:
        self.status = replace(self.status, refused_version=command.version, errors=tuple(errors))
        return self.status


# ---- applying a document to the running agent (on its loop thread) ----

DETECTOR_SETTINGS = {"model", "threads", "rect", "models_dir"}


def apply_document(agent: Agent, command: ApplyConfig) -> ConfigStatus:
    """Refuse the document with every reason (nothing changes), or persist and apply it."""
    desired = agent.desired
    if desired is None:
        return ConfigStatus(refused_version=command.version,
                            errors=("this agent was built without an AgentConfig to apply a document over",))
    try:
        return _apply(agent, desired, command, desired.prepare(command))
    except DesiredConfigError as err:
        logger.warning("desired config v%d refused: %s", command.version, err)
        return desired.refused(command, err.errors)


def _apply(agent: Agent, desired: DesiredConfig, command: ApplyConfig, change: Change) -> ConfigStatus:
    """What can fail first (the new loop's sources and detector, persisting), then the changes."""
    config = change.config
    options = replace(agent.options, sources=list(config.source or []), stream_ids=config.stream_ids,
                      max_frames=config.max_frames, loop=config.loop, fallback_model=config.model,
                      analytics=dict(config.analytics))
    loop = detector = None
    try:
        if change.loop:
            # a rollout's engine stays in use: the config's model is then what a rollback returns to
            if DETECTOR_SETTINGS & set(change.loop) and agent.engines.active.current is None and desired.load_detector:
                detector = desired.load_detector(config)
            loop = agent.make_loop(options, agent.loop.feeds)
            loop.start()
        status = desired.applied(command, change)  # persisted: the next start runs it too
    except (AgentError, OSError) as err:
        for part in (loop, detector):
            if part is not None:
                part.close()
        raise DesiredConfigError([f"desired config v{command.version}: {err}"]) from err
    if loop is not None:
        agent.use_loop(loop, options, detector)
    if detector is not None:  # the plan names the model the loop runs now
        from edgefleet.adaptive.plan import detector_fields

        path = getattr(detector, "model_path", "") or config.model or ""
        agent.plan = replace(agent.plan, model=Path(path).stem, **detector_fields(detector, path))
    _apply_live(agent, config, change)
    logger.info("desired config v%d applied (%s)", command.version, status.how)
    return status


def _apply_live(agent: Agent, config: AgentConfig, change: Change) -> None:
    """The settings the loop takes between two ticks."""
    from edgefleet.adaptive.schedule import MotionGate

    if "detect_interval" in change.live and agent.adapter is None:  # with --auto-plan the plan chooses it
        agent.planned_interval = config.detect_interval
        agent.loop.set_detect_interval(config.detect_interval)
    if "motion_gate" in change.live:
        agent.schedules.motion_gate = config.motion_gate
        for stream in agent.loop.streams:
            stream.scheduler.motion_gate = MotionGate(config.motion_gate) if config.motion_gate else None
