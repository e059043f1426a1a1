"""Bridges devices that speak MQTT only into the fleet (`edgefleet serve --mqtt HOST:PORT`).

Subscribes to the agent's Frigate-style topics (see `agent.mqtt`):

- `<prefix>/+/available`  `online` | `offline`
- `<prefix>/+/stats`      the health sample, JSON
- `<prefix>/+/+/events`   `{"type": "new"|"update"|"end", "before": {...}, "after": {...}}`

and hands what it hears to `apply(device_id, available=, health=, stream_id=)`
(`FleetStore.upsert_mqtt_device`): an MQTT-only device appears in the store, stays seen while it
publishes, and registers the streams it reports events for. Each payload is validated here, at
the edge; a malformed one is counted (`malformed`) and logged, and the bridge carries on.
"""
from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import paho.mqtt.client as mqtt

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


class MalformedMessage(ValueError):
    """A payload or topic the bridge cannot use; the message names what is wrong."""


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
    """`start()` connects (paho's network thread) and subscribes; `stop()` disconnects.

    `apply` is called on paho's thread; give it something that serialises store access
    (`fleet.server` submits to the store's own thread).
    """

    def __init__(self, apply: Callable[..., Any], host: str, port: int, prefix: str = "edgefleet",
                 client_id: str = "edgefleet-bridge"):
        self.apply = apply
        self.host, self.port = host, port
        self.prefix = prefix.strip("/")
        self.received = 0
        self.malformed = 0
        self.connected = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(1, 10)

    def start(self) -> None:
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()
        logger.info("mqtt bridge: listening to %s/# on %s:%d", self.prefix, self.host, self.port)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        logger.info("mqtt bridge: stopped; %d message(s), %d malformed", self.received, self.malformed)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            logger.warning("mqtt bridge: broker %s:%d refused: %s", self.host, self.port, reason_code)
            return
        client.subscribe([(f"{self.prefix}/+/available", 1), (f"{self.prefix}/+/stats", 0),
                          (f"{self.prefix}/+/+/events", 1)])
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()

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

    def _apply(self, device_id: str, **values) -> None:
        result = self.apply(device_id, **values)
        if isinstance(result, Future):  # applied on the store's thread: report a failure from there
            def report(done: Future) -> None:
                err = done.exception()
                if err is not None:
                    logger.error("mqtt bridge: storing %s for %s failed: %s", sorted(values), device_id, err)

            result.add_done_callback(report)
