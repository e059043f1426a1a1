"""Bridges devices that speak MQTT only into the fleet (`edgefleet serve --mqtt HOST:PORT`).

Subscribes to the agent's Frigate-style topics (see `agent.mqtt`):

- `<prefix>/+/available`  `online` | `offline`
- `<prefix>/+/stats`      the health sample, JSON
- `<prefix>/+/+/events`   `{"type": "new"|"update"|"end", "before": {...}, "after": {...}}`

and hands what it hears to `apply(device_id, available=, health=, stream_id=)`
(`FleetStore.upsert_mqtt_device`): an MQTT-only device appears in the store, stays seen while it
publishes, and registers the streams it reports events for. Each payload is validated here, at
the edge; a malformed one is counted (`malformed`) and logged, and the bridge carries on.

Trust: a topic names the device it claims to come from, and anyone who may publish to the broker
can claim any name. So the bridge accepts an MQTT-only device only when its id matches an
`--mqtt-allow` pattern (a device id, or a shell-style pattern such as `porch-*`; `*` accepts every
device): with none, it accepts none, and says so once per unknown device. The patterns choose
which devices join; the broker decides who may publish (`--mqtt-username`, a password, TLS, and
an ACL per device, see docs/mqtt.md). A device enrolled over gRPC is never changed by MQTT (the
store leaves it to its Session), allowed or not.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import math
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edgefleet.common.addresses import host_port_arg
from edgefleet.common.mqtt import ConnectReport, MqttLogin

logger = logging.getLogger(__name__)

EVENT_TYPES = frozenset({"new", "update", "end"})
AVAILABILITY = frozenset({"online", "offline"})
HEALTH_NUMBERS = frozenset({
    "fps", "detect_fps", "inference_ms_p50", "inference_ms_p95", "latency_ms_p95", "frames_dropped",
    "outbox_depth", "cpu_percent", "temperature_c", "frames_total", "detections_total",
})
STREAM_TEXT = frozenset({"stream_id", "source", "state", "error"})
STREAM_NUMBERS = frozenset({"fps", "frames", "dropped"})
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""What a device or stream id may look like (the store's ids, the agent's stream ids)."""
MAX_IGNORED_IDS = 1000
"""Ignored device ids remembered (and logged once each): a publisher inventing ids cannot grow it further."""


class MalformedMessage(ValueError):
    """A payload or topic the bridge cannot use; the message names what is wrong."""


@dataclass(frozen=True)
class BridgeConfig:
    """Where the bridge listens, how it logs in, and which MQTT-only devices it accepts (`allow`)."""

    host: str
    port: int
    prefix: str = "edgefleet"
    login: MqttLogin = field(default_factory=MqttLogin)
    allow: tuple[str, ...] = ()


def add_bridge_arguments(parser: argparse.ArgumentParser) -> None:
    """`edgefleet serve`'s MQTT flags."""
    group = parser.add_argument_group("the MQTT bridge (docs/mqtt.md)")
    group.add_argument("--mqtt", type=host_port_arg("--mqtt"), metavar="HOST:PORT",
                       help="also bridge devices that speak MQTT only (edgefleet/+/available, stats, events)")
    group.add_argument("--mqtt-prefix", default="edgefleet", metavar="TOPIC", help="topic prefix (default edgefleet)")
    group.add_argument("--mqtt-allow", action="append", default=[], metavar="ID|PATTERN",
                       help="accept the MQTT-only devices whose id matches (repeatable; shell-style: porch-*, "
                            "or * for any); without it none is accepted")
    group.add_argument("--mqtt-username", metavar="NAME",
                       help="log in to the broker as NAME (password: --mqtt-password-file or $EDGEFLEET_MQTT_PASSWORD)")
    group.add_argument("--mqtt-password-file", type=Path, metavar="FILE", help="the password is this file's first line")
    group.add_argument("--mqtt-tls-ca", type=Path, metavar="PEM", help="speak TLS to the broker, trusting this CA")
    group.add_argument("--mqtt-tls-cert", type=Path, metavar="PEM",
                       help="a client certificate for the broker (with --mqtt-tls-key)")
    group.add_argument("--mqtt-tls-key", type=Path, metavar="PEM", help="the client certificate's private key")


def bridge_config(args: argparse.Namespace) -> BridgeConfig | None:
    """The bridge's config from `serve`'s flags (None without --mqtt). Raises MqttSettingsError or ValueError."""
    login_flags = ("mqtt_username", "mqtt_password_file", "mqtt_tls_ca", "mqtt_tls_cert", "mqtt_tls_key")
    if args.mqtt is None:
        given = [f"--{name.replace('_', '-')}" for name in (*login_flags, "mqtt_allow") if getattr(args, name)]
        if given:
            raise ValueError(f"{', '.join(given)} need --mqtt HOST:PORT (the broker to bridge)")
        return None
    login = MqttLogin.from_settings(*(getattr(args, name) for name in login_flags))
    host, port = args.mqtt
    return BridgeConfig(host, port, prefix=args.mqtt_prefix, login=login, allow=tuple(args.mqtt_allow))


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise MalformedMessage(f"{field} must be a non-negative number, got {value!r}")
    return value


def parse_health(payload: bytes) -> dict:
    """A stats payload -> the health dict the store keeps (known fields only, types checked)."""
    data = _json_object(payload)
    health: dict[str, Any] = {k: _number(v, k) for k, v in data.items() if k in HEALTH_NUMBERS}
    streams = data.get("streams", [])
    if not isinstance(streams, list):
        raise MalformedMessage(f"streams must be a list, got {type(streams).__name__}")
    health["streams"] = []
    for i, stream in enumerate(streams):
        if not isinstance(stream, dict):
            raise MalformedMessage(f"streams[{i}] must be an object")
        entry: dict[str, str | float] = {}
        for key, value in stream.items():
            if key in STREAM_TEXT:
                if not isinstance(value, str):
                    raise MalformedMessage(f"streams[{i}].{key} must be a string, got {value!r}")
                entry[key] = value
            elif key in STREAM_NUMBERS:
                entry[key] = _number(value, f"streams[{i}].{key}")
        health["streams"].append(entry)
    return health


def parse_event(payload: bytes) -> dict:
    """An events payload -> the event, checked: a known type, an `after` with a string label."""
    event = _json_object(payload)
    if event.get("type") not in EVENT_TYPES:
        raise MalformedMessage(f"type must be one of {sorted(EVENT_TYPES)}, got {event.get('type')!r}")
    after = event.get("after")
    if not isinstance(after, dict) or not isinstance(after.get("label"), str):
        raise MalformedMessage("after must be an object with a string label")
    return event


def _json_object(payload: bytes) -> dict:
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as err:
        raise MalformedMessage(f"not JSON: {err}") from err
    if not isinstance(data, dict):
        raise MalformedMessage(f"expected a JSON object, got {type(data).__name__}")
    return data


class MqttBridge:
    """`start()` connects (paho's network thread) and subscribes; `connected` is set once the broker
    confirmed the subscriptions; `stop()` disconnects.

    `apply` is called on paho's thread; give it something that serialises store access
    (`fleet.server` submits to the store's own thread).
    """

    def __init__(self, apply: Callable[..., Any], host: str, port: int, prefix: str = "edgefleet",
                 client_id: str = "edgefleet-bridge", *, login: MqttLogin | None = None,
                 allow: Sequence[str] = ()):
        self.apply = apply
        self.host, self.port = host, port
        self.prefix = prefix.strip("/")
        self.login = login or MqttLogin()
        self.allow = tuple(allow)
        self.received = 0
        self.malformed = 0
        self.ignored = 0
        """Messages from devices no --mqtt-allow pattern matches (not applied)."""
        self.ignored_devices: set[str] = set()
        """Their device ids, the first MAX_IGNORED_IDS of them (each is logged once)."""
        self.connected = threading.Event()
        self._stopping = False
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        context = self.login.tls_context()
        self.login.configure(self._client, context)
        self.report = ConnectReport(logger, "mqtt bridge", host, port, self.login, context)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self.report.on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.reconnect_delay_set(1, 10)

    @classmethod
    def from_config(cls, apply: Callable[..., Any], config: BridgeConfig) -> MqttBridge:
        return cls(apply, config.host, config.port, config.prefix, login=config.login, allow=config.allow)

    def start(self) -> None:
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()
        allowed = ", ".join(self.allow) if self.allow else "none (no --mqtt-allow)"
        logger.info("mqtt bridge: listening to %s/# on %s:%d %s; MQTT-only devices accepted: %s",
                    self.prefix, self.host, self.port, self.login.describe(), allowed)
        if not self.login.username and not self.login.tls_cert:
            logger.warning("mqtt bridge: the broker is used without credentials: whoever reaches it can publish "
                           "as any allowed device (docs/mqtt.md: broker credentials and a per-device ACL)")

    def allowed(self, device_id: str) -> bool:
        """Whether an MQTT-only device with this id may join the fleet (an --mqtt-allow pattern matches)."""
        return any(fnmatch.fnmatchcase(device_id, pattern) for pattern in self.allow)

    def stop(self) -> None:
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()
        logger.info("mqtt bridge: stopped; %d message(s), %d malformed", self.received, self.malformed)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.report.refused(reason_code)
            return
        client.subscribe([(f"{self.prefix}/+/available", 1), (f"{self.prefix}/+/stats", 0),
                          (f"{self.prefix}/+/+/events", 1)])
        self.report.connected()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        # `connected` once the broker confirmed the subscriptions: a message published after it is heard
        refused = [str(code) for code in reason_codes if code.is_failure]
        if refused:
            logger.error("mqtt bridge: the broker refused the subscriptions under %s/: %s (check its ACL for %s)",
                         self.prefix, ", ".join(refused), self.login.username or "anonymous clients")
            return
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if not self._stopping:
            self.report.dropped(reason_code)

    def _on_message(self, client, userdata, message) -> None:
        # paho ends its network thread on an exception from a callback: nothing may escape here
        try:
            self.handle(message.topic, message.payload)
        except MalformedMessage as err:
            self.malformed += 1
            logger.warning("mqtt bridge: malformed message on %s (%d so far): %s", message.topic, self.malformed, err)
        except Exception:  # a store failure must not end the bridge either
            self.malformed += 1
            logger.exception("mqtt bridge: could not apply the message on %s", message.topic)

    def handle(self, topic: str, payload: bytes) -> None:
        """Validate one message and apply it; raises MalformedMessage."""
        self.received += 1
        parts = topic.split("/")
        prefix = self.prefix.split("/")
        if parts[:len(prefix)] != prefix:
            raise MalformedMessage(f"topic {topic!r} is not under {self.prefix}/")
        parts = parts[len(prefix):]
        if not parts or not NAME.match(parts[0]):
            raise MalformedMessage(f"device id in {topic!r} is not a valid id")
        device_id = parts[0]
        if not self.allowed(device_id):
            self._ignore(device_id)
            return
        if parts[1:] == ["available"]:
            state = payload.decode("utf-8", "replace").strip()
            if state not in AVAILABILITY:
                raise MalformedMessage(f"availability must be online or offline, got {state[:40]!r}")
            self._apply(device_id, available=state)
        elif parts[1:] == ["stats"]:
            self._apply(device_id, health=parse_health(payload))
        elif len(parts) == 3 and parts[2] == "events":
            if not NAME.match(parts[1]):
                raise MalformedMessage(f"stream id in {topic!r} is not a valid id")
            parse_event(payload)
            self._apply(device_id, stream_id=parts[1])
        else:
            raise MalformedMessage(f"unexpected topic {topic!r}")

    def _ignore(self, device_id: str) -> None:
        self.ignored += 1
        if device_id not in self.ignored_devices and len(self.ignored_devices) < MAX_IGNORED_IDS:
            self.ignored_devices.add(device_id)
            logger.warning("mqtt bridge: ignoring MQTT device %r: no --mqtt-allow pattern matches it "
                           "(edgefleet serve --mqtt-allow %s accepts it)", device_id, device_id)

    def _apply(self, device_id: str, **values) -> None:
        result = self.apply(device_id, **values)
        if isinstance(result, Future):  # applied on the store's thread: report a failure from there
            def report(done: Future) -> None:
                err = done.exception()
                if err is not None:
                    logger.error("mqtt bridge: storing %s for %s failed: %s", sorted(values), device_id, err)

            result.add_done_callback(report)
