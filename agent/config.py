"""`AgentConfig`: every setting of `edge-agent run` and `edge-agent serve`, typed and bounded once.

The same model is filled from the command line and from a YAML file (`--config`, agent.flags and
agent.config_file); a setting has one name, its flag's (`--motion-gate` is `motion_gate` here and
`motion-gate:` or `motion_gate:` in a file). Bounds live in the fields (`Field(ge=..., le=...)`), so
a value out of range is refused the same way wherever it came from. Precedence: flags over the
file over the defaults here.

`serve` is the agent with an inference service (`listen` set): it may run without `controller`
(then it serves only), and without `source` (served streams only).

Settings that contradict each other are refused with the reason (`detect_interval` given with
`auto_plan`: the plan chooses the detect interval; `source` or `mqtt` for a `serve` without a
controller; `tls_cert` without `tls_key`). Settings that are only idle are warned about instead
(`notes()`, logged at start): `target_fps` or `calibrate` without `auto_plan` (refusing these would
break config files that set them ahead of turning auto-plan on), and the agent's own settings on
a `serve` that has no controller.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgefleet.common.addresses import parse_host_port
from edgefleet.common.labels import label_problem

from .controllers import controller_text
from .objects import ObjectSettings
from .snapshots import SnapshotSettings
from .zones import StreamAnalytics

LogLevel = Literal["debug", "info", "warning", "error"]
RestartMode = Literal["auto", "exit", "in-process"]
Pace = Literal["fast", "realtime"]


def _int_as_text(value: Any) -> Any:
    """A YAML integer where text is expected (a camera index, a numeric name) is that text."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _text_as_path(value: Any) -> Any:
    return Path(_int_as_text(value)) if isinstance(_int_as_text(value), str) else value


Text = Annotated[str, BeforeValidator(_int_as_text)]
FilePath = Annotated[Path, BeforeValidator(_text_as_path)]


def setting(default: Any, help: str, *, metavar: str | None = None, flag: str | None = None,
            joined: bool = False, **bounds: Any) -> Any:
    """A field that is also a flag: `help` and `metavar` for --help, `flag` when it is not
    `--<name-with-dashes>` (e.g. `--no-calibrate` for `calibrate`); `joined`: a config file may
    give the value as a list, joined with commas (`controller: [a:50051, b:50051]`)."""
    extra: dict[str, Any] = {k: v for k, v in (("metavar", metavar), ("flag", flag)) if v is not None}
    if joined:
        extra["joined"] = True
    return Field(default, description=help, json_schema_extra=extra or None, **bounds)


HOST_PORTS = {"mqtt": False, "metrics_listen": True, "listen": True}
"""The HOST:PORT settings, and whether port 0 (any free port, for a server) is allowed."""

CONTROLLER_ONLY = ("enroll_key", "name", "state_dir", "tls_ca", "backoff_max_s", "drain_timeout", "restart_mode",
                   "outbox_max_mb",
                   "outbox_max_age_s", "commit_interval_s", "gate_sample_every", "download_mbps", "engine_confirm_s")
"""Settings of the agent's link, outbox and deployments: idle on a `serve` without a controller."""

MQTT_LOGIN = ("mqtt_username", "mqtt_password_file", "mqtt_tls_ca", "mqtt_tls_cert", "mqtt_tls_key")
"""How the agent logs in to the MQTT broker (common.mqtt.MqttLogin): idle without `mqtt`."""


class AgentConfig(BaseModel):
    """The agent's settings, validated once at the edge (see the module's docstring)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # ---- the controller ----
    controller: Text | None = setting(None, "the controller to report to (required by run; serve reports only "
                                            "with it); its replicas as HOST:PORT,HOST:PORT, or a name whose DNS "
                                            "records are the replicas: the agent moves to another when it loses one",
                                      metavar="HOST:PORT", joined=True)
    tls_ca: FilePath | None = setting(None, "dial the controller with TLS, trusting this CA", metavar="PEM")
    tls_cert: FilePath | None = setting(None, "this device's certificate, for mutual TLS", metavar="PEM")
    tls_key: FilePath | None = setting(None, "this device's private key, for mutual TLS", metavar="PEM")
    state_dir: FilePath = setting(Path("var/agent"), "identity and the durable outbox live here (default var/agent)",
                                  metavar="DIR")
    enroll_key: Text | None = setting(None, "enrollment key; needed on the first run only", metavar="KEY")
    name: Text | None = setting(None, "name to enroll under (default: hostname)", metavar="NAME")
    labels: dict[Text, Text] = setting({}, "a label of this device, reported at enrollment and at every connect; "
                                           "selectors (devices, rollouts, commands) choose devices by them; "
                                           "repeatable (file: labels: {site: lab})", metavar="KEY=VALUE",
                                       flag="--label")
    backoff_max_s: float = setting(10.0, "while the controller is unreachable, retry with exponential backoff and "
                                         "jitter up to S seconds apart (default 10)", metavar="S", gt=0)
    drain_timeout: float = setting(30.0, "at the end, wait up to S seconds for the controller to acknowledge "
                                         "everything (default 30)", metavar="S", ge=0)
    restart_mode: RestartMode = setting("auto", "how the controller's restart command restarts the agent: "
                                                "in-process restarts the frame loop (sources, detector, trackers; "
                                                "the outbox and link stay up), exit answers, drains and exits with "
                                                "code 75 for systemd to start it again, auto (default) exits under "
                                                "systemd (NOTIFY_SOCKET or INVOCATION_ID set) and restarts in "
                                                "process elsewhere", metavar="MODE")

    # ---- local streams ----
    source: list[Text] | None = setting(None, "video file, image folder, camera index (0), rtsp:// or http:// URL, "
                                              "or synthetic://640x480?objects=5; repeat for several streams "
                                              "(batched into one detector call)")
    stream_id: list[Text] | None = setting(None, "id of each --source in reports, in the same order "
                                                 "(default cam0, cam1, ...)", metavar="ID")
    max_frames: int = setting(0, "stop each stream after N frames (0: at the source's end)", metavar="N", ge=0)
    loop: bool = setting(False, "restart a file source when it ends")
    pace: Pace = setting("fast", "how file sources play: fast (default) gives every frame as fast as the agent "
                                 "takes them; realtime plays a video at its frame rate (25 fps when the file "
                                 "states none) and an image folder at --folder-fps, as a camera would, dropping "
                                 "and counting the frames the agent is too slow to take", metavar="PACE")
    folder_fps: float = setting(1.0, "images a second from an image folder at --pace realtime (default 1)",
                                metavar="FPS", gt=0, le=240)
    detect_interval: int = setting(1, "detect on every Nth frame of a stream; the tracker predicts in between "
                                      "(default 1)", metavar="N", ge=1)
    motion_gate: float = setting(0.0, "skip detection while the scene is static (mean pixel change below T of "
                                      "255; e.g. 2); 0 turns it off (default)", metavar="T", ge=0, le=255)

    # ---- the outbox ----
    outbox_max_mb: float = setting(512.0, "bound the outbox at MB megabytes of records; when full the oldest "
                                          "unacknowledged records are dropped first, counted and reported "
                                          "(default 512; 0: no bound)", metavar="MB", ge=0)
    outbox_max_age_s: float = setting(7 * 24 * 3600.0, "drop unacknowledged records captured more than S seconds "
                                                       "ago, oldest first (default 604800, 7 days; 0: keep them "
                                                       "however old)", metavar="S", ge=0)
    commit_interval_s: float = setting(0.25, "commit detections to the outbox (one fsync) and send them in groups "
                                             "every S seconds (default 0.25): shorter reaches the controller and "
                                             "MQTT sooner, longer costs less CPU, I/O and flash wear; a crash "
                                             "loses at most the last S seconds", metavar="S", ge=0, le=60)

    # ---- the detector ----
    threads: int | None = setting(None, "inference threads (default: ONNX Runtime's choice, one per core)",
                                  metavar="N", ge=1)
    rect: bool = setting(False, "rectangular inference (ONNX models): letterbox frames into the smallest multiple "
                                "of 32 that holds them, not the whole input square; 4:3 video runs at 416x320, "
                                "about a quarter faster, with slightly different scores")
    models_dir: FilePath | None = setting(None, "where converted models are cached (default $EDGEFLEET_CACHE/models "
                                                "or ~/.cache/edgefleet/models)", metavar="DIR")
    model: FilePath | None = setting(None, "model file to detect with (.onnx, .engine, .pt; default: the bundled "
                                           "model); with --auto-plan, the only candidate", metavar="FILE")

    # ---- planning (run) ----
    auto_plan: bool = setting(False, "plan model, input size and detect interval for this device (as `edge-agent "
                                     "plan`), then adapt them at run time to measured latency, drops and temperature")
    target_fps: float = setting(15.0, "with --auto-plan: frames per second per stream to sustain (default 15)",
                                metavar="F", gt=0)
    calibrate: bool = setting(True, "with --auto-plan: plan from the static table, without timing the models",
                              flag="--no-calibrate")
    min_agreement: float = setting(0.95, "with --auto-plan: a quantized or converted model runs only if its "
                                         "detections agree this much (F1) with its FP32 source's, and then counts as "
                                         "accurate as it (default 0.95; 1 keeps to FP32)", metavar="F", ge=0, le=1)

    # ---- deployments ----
    gate_sample_every: int = setting(5, "while a deployment is shadow-tested, every Nth detected frame also runs on "
                                        "the candidate engine (default 5)", metavar="N", ge=1)
    download_mbps: float = setting(0.0, "cap artifact downloads at MB megabytes per second, for metered or shared "
                                        "links (default 0: no cap); an interrupted download resumes where it "
                                        "stopped", metavar="MB", ge=0)
    engine_confirm_s: float = setting(60.0, "a deployed engine counts as healthy after S seconds of running; 3 "
                                            "starts in a row without that roll it back (default 60)",
                                      metavar="S", gt=0)

    # ---- reporting besides the controller ----
    metrics_listen: Text | None = setting(None, "serve Prometheus metrics at http://HOST:PORT/metrics while "
                                                "running (off by default)", metavar="HOST:PORT")
    mqtt: Text | None = setting(None, "also publish Frigate-style topics (availability, track events, label "
                                      "counts, stats) to this MQTT broker (serve: needs --controller)",
                                metavar="HOST:PORT")
    mqtt_prefix: Text = setting("edgefleet", "topic prefix for --mqtt (default edgefleet)", metavar="TOPIC")
    mqtt_username: Text | None = setting(None, "log in to the MQTT broker as NAME (the password from "
                                               "--mqtt-password-file or $EDGEFLEET_MQTT_PASSWORD)", metavar="NAME")
    mqtt_password_file: FilePath | None = setting(None, "the MQTT password is this file's first line (never a flag: "
                                                        "it would show in ps)", metavar="FILE")
    mqtt_tls_ca: FilePath | None = setting(None, "speak TLS to the MQTT broker, trusting this CA", metavar="PEM")
    mqtt_tls_cert: FilePath | None = setting(None, "a client certificate for the MQTT broker (with --mqtt-tls-key)",
                                             metavar="PEM")
    mqtt_tls_key: FilePath | None = setting(None, "the client certificate's private key", metavar="PEM")

    # ---- the inference service (serve) ----
    listen: Text | None = setting(None, "where clients call (port 0 picks one; the first stdout line names it)",
                                  metavar="HOST:PORT")
    token: Text | None = setting(None, "require 'authorization: Bearer T' on every call (default "
                                       "$EDGEFLEET_INFERENCE_TOKEN; none: open)", metavar="T")
    max_batch: int = setting(8, "frames per detector call at most, across all clients (default 8)",
                             metavar="N", ge=1)
    batch_window_ms: float = setting(5.0, "how long a waiting frame waits for others to fill its batch (default 5)",
                                     metavar="MS", ge=0)
    stream_queue: int = setting(2, "frames of one stream waiting for the detector before its oldest is dropped "
                                   "(default 2)", metavar="N", ge=1)
    max_frame_bytes: int = setting(8 << 20, "largest image payload accepted (encoded bytes or raw pixels; default "
                                            "8 MiB)", metavar="B", ge=1)
    grace: float = setting(2.0, "on SIGTERM/SIGINT, let open calls finish for up to S seconds (default 2)",
                           metavar="S", ge=0)

    # ---- zones and lines (config file only) ----
    analytics: dict[Text, StreamAnalytics] = Field(
        default_factory=dict, description="per local stream id: its zones and lines (agent.zones, docs/zones.md)")
    objects: ObjectSettings = Field(
        default_factory=ObjectSettings,
        description="tracked objects: enabled, confirm_frames, update_every_s, score_margin, lost_frames, "
                    "path_points (agent.objects, docs/zones.md)")
    snapshots: SnapshotSettings = Field(
        default_factory=SnapshotSettings,
        description="the objects' snapshots: enabled, crop_size, frame_width, quality, max_bytes, per_minute "
                    "(agent.snapshots, docs/zones.md)")

    log_level: LogLevel = "info"

    @field_validator(*HOST_PORTS)
    @classmethod
    def _host_port(cls, value: str | None, info) -> str | None:
        if value is not None:
            try:
                parse_host_port(value, allow_port_zero=HOST_PORTS[info.field_name])
            except ValueError:
                raise ValueError(f"--{info.field_name.replace('_', '-')} must be HOST:PORT, got {value!r}") from None
        return value

    @field_validator("controller")
    @classmethod
    def _controller(cls, value: str | None) -> str | None:
        """One or more HOST:PORT, as `a:50051,b:50051` (agent.controllers); the first one that is not
        is named in the error."""
        try:
            return None if value is None else controller_text(value)
        except ValueError as err:
            raise ValueError(f"--controller {err}") from None

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, text in value.items():
            problem = label_problem(key, text)
            if problem:
                raise ValueError(problem)
        return value

    @field_validator("analytics", mode="before")
    @classmethod
    def _analytics(cls, value: Any) -> Any:
        """Each stream's zones and lines (agent.zones), a fault named with its stream."""
        if not isinstance(value, dict):
            return value
        settings = {}
        for sid, setting in value.items():
            try:
                settings[sid] = StreamAnalytics.model_validate(setting)
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                message = str(first["ctx"]["error"]) if first["type"] == "value_error" else first["msg"]
                raise ValueError(f"stream {sid!r}: {where + ': ' if where else ''}{message}") from None
        return settings

    @field_validator("objects", "snapshots", mode="before")
    @classmethod
    def _settings(cls, value: Any, info) -> Any:
        """The objects' and snapshots' settings (a mapping), a mistake named with its key."""
        model: type[ObjectSettings] | type[SnapshotSettings] = (
            ObjectSettings if info.field_name == "objects" else SnapshotSettings)
        if isinstance(value, model):
            return value
        keys = ", ".join(model.model_fields)
        if not isinstance(value, dict):
            raise ValueError(f"must be a mapping of settings ({keys}), got {type(value).__name__} {value!r}")
        try:
            return model.model_validate(value)
        except ValidationError as err:
            first = err.errors()[0]
            key = ".".join(str(part) for part in first["loc"])
            if first["type"] == "extra_forbidden":
                raise ValueError(f"unknown key {key!r} (keys: {keys})") from None
            raise ValueError(f"{key}: {first['msg'][0].lower()}{first['msg'][1:]}, got {first['input']!r}") from None

    @field_validator("mqtt_prefix")
    @classmethod
    def _topic_prefix(cls, value: str) -> str:
        prefix = value.strip("/")
        if not prefix or any(c in prefix for c in "+#"):
            raise ValueError(f"must be a non-empty topic without + or #, got {value!r}")
        return prefix

    @model_validator(mode="after")
    def _consistent(self) -> AgentConfig:
        for problem in (self._streams_problem(), self._serve_problem(), self._conflict()):
            if problem:
                raise ValueError(problem)
        return self

    def _streams_problem(self) -> str | None:
        if self.listen is None and self.controller is None:
            return "--controller is required: the controller this agent reports to (HOST:PORT)"
        if self.listen is None and not self.source:
            return "at least one --source is needed"
        if self.stream_id is not None and len(self.stream_id) != len(self.source or []):
            return f"{len(self.stream_id)} --stream-id for {len(self.source or [])} --source; give one each"
        if self.stream_id is not None and len(set(self.stream_id)) != len(self.stream_id):
            return f"--stream-id values must be unique, got {self.stream_id}"
        unknown = sorted(set(self.analytics) - set(self.stream_ids))
        if unknown:
            return f"analytics: {unknown[0]!r} is not a local stream (streams: {', '.join(self.stream_ids) or 'none'})"
        return None

    def _serve_problem(self) -> str | None:
        if self.listen is None or self.controller is not None:
            return None
        if self.source:
            return "--source needs --controller (local streams report to a controller); without one, serve only"
        if self.mqtt:
            return "--mqtt needs --controller (what goes to MQTT is what the agent stores and reports)"
        return None

    def _conflict(self) -> str | None:
        if (self.tls_cert is None) != (self.tls_key is None):
            return "--tls-cert and --tls-key go together"
        if self.auto_plan and "detect_interval" in self.model_fields_set:
            return ("--detect-interval and --auto-plan conflict: the plan chooses the detect interval and the "
                    "runtime controller changes it; drop one of them")
        if self.auto_plan and self.listen is not None:
            return "--auto-plan is not available with serve: its detector is fixed (--model or a deployment)"
        return None

    def notes(self) -> list[str]:
        """Settings given that have no effect, with why (logged as warnings at start)."""
        given = self.model_fields_set
        notes = [f"--{name.replace('_', '-') if name != 'calibrate' else 'no-calibrate'} has no effect without "
                 "--auto-plan" for name in ("target_fps", "calibrate", "min_agreement")
                 if name in given and not self.auto_plan]
        mqtt_idle = [f"--{name.replace('_', '-')}" for name in MQTT_LOGIN if name in given and not self.mqtt]
        if mqtt_idle:
            notes.append(f"{', '.join(mqtt_idle)}: no effect without --mqtt")
        if self.listen is not None and self.controller is None:
            idle = [f"--{name.replace('_', '-')}" for name in CONTROLLER_ONLY if name in given]
            if idle:
                notes.append(f"{', '.join(idle)}: no effect without --controller (serving only)")
        return notes

    @property
    def serving(self) -> bool:
        """`edge-agent serve`: the inference service runs (with or without a controller)."""
        return self.listen is not None

    @property
    def stream_ids(self) -> list[str]:
        """One id per --source: the given ones, else cam0, cam1, ..."""
        if self.stream_id is not None:
            return list(self.stream_id)
        return [f"cam{i}" for i in range(len(self.source or []))]

    @property
    def mqtt_address(self) -> tuple[str, int] | None:
        return parse_host_port(self.mqtt) if self.mqtt else None
