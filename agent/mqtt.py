"""Frigate-style MQTT topics from the agent (optional; `edge-agent run --mqtt HOST:PORT`).

Topics, under `<prefix>/` (default `edgefleet/`):

- `<device>/available`: `online` (retained) once connected; `offline` (retained) as the last will,
  so a killed agent flips it, and on a clean stop.
- `<device>/<stream>/events`: `{"type": "new"|"update"|"end", "before": {...}, "after": {...}}`,
  one track's life as Frigate reports an event's (see `TrackEvents`).
- `<device>/<stream>/<label>`: how many tracks of that label are active now (retained).
- `<device>/stats`: the health sample (the one the heartbeats carry), every `stats_every_s`.
- `<device>/<stream>/zones/<zone>`: a zone event (agent.analytics.ZoneEvent as JSON: `kind` enter or
  exit, `dwell_s`, `occupancy`, ...); `<device>/<stream>/zones/<zone>/occupancy`: objects in the zone
  now (retained); `<device>/<stream>/lines/<line>`: a crossing (LineCrossing as JSON: `direction` in or
  out, `segment`, ...). Published as the loop evaluates them (agent.analytics.HUB), not after commit.
- `<device>/<stream>/<label>/snapshot`: the JPEG of the latest ended object's best crop of that label
  (retained; Frigate's shape), published once the snapshot is encoded and committed (agent.snapshots).

With `--mqtt-username` (the password from `--mqtt-password-file` or `$EDGEFLEET_MQTT_PASSWORD`) and
`--mqtt-tls-ca [--mqtt-tls-cert --mqtt-tls-key]` it logs in and speaks TLS (`common.mqtt.MqttLogin`);
a refused login or an untrusted broker certificate is logged with the reason, and retried.

MQTT never slows the camera loop: paho's network thread does the I/O; events go at QoS 1 into
paho's queue, bounded by `max_queued` (what does not fit is dropped and counted), counts and stats
at QoS 0 (dropped and counted while disconnected). The gRPC link stays the durable path.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import paho.mqtt.client as mqtt

from edgefleet.common.mqtt import ConnectReport, MqttLogin
from edgefleet.common.records import Record, SnapshotRecord

from .analytics import HUB, Event, LineCrossing
from .outbox import OutboxObject, OutboxRecord

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "edgefleet"
TOPIC_UNSAFE = str.maketrans({"/": "_", "+": "_", "#": "_", "\0": "_"})
"""A label becomes one topic level: characters MQTT gives a meaning there are replaced."""


@dataclass(frozen=True)
class TrackEventsConfig:
    end_after_frames: int = 15
    """A track not seen for this many consecutive frames of its stream ends. Raising it rides out
    longer occlusions without an end/new pair; it costs a later `end`."""
    update_every_s: float = 1.0
    """At most one `update` per track per this many seconds (a changed label is sent at once)."""
    min_box_shift: float = 0.05
    """An update needs the box to move (any edge) by this fraction of its size..."""
    min_score_change: float = 0.05
    """...or the score to change by this much, or the label to change."""


@dataclass
class _Track:
    track_id: int
    start_time: float
    after: dict
    published: dict
    last_update: float
    missed: int = 0
    top_score: float = 0.0


class TrackEvents:
    """One stream's tracks -> Frigate-style events. Pure logic: no clock, no I/O.

    `step(objects, frame_time)` takes one frame's tracked objects and returns the events it
    causes: `new` the first time a track id appears, `update` when its box, score or label
    changed meaningfully since the last event (throttled by `update_every_s`), `end` once it
    has been gone for `end_after_frames` frames. `before` is the last published state.
    """

    def __init__(self, stream_id: str, config: TrackEventsConfig | None = None, device_id: str = ""):
        self.stream_id = stream_id
        self.device_id = device_id
        self.config = config or TrackEventsConfig()
        self.tracks: dict[int, _Track] = {}

    def counts(self) -> Counter[str]:
        """Active tracks per label."""
        return Counter(t.after["label"] for t in self.tracks.values())

    def step(self, objects: list[OutboxObject], frame_time: float) -> list[dict]:
        events = []
        seen = set()
        for obj in objects:
            seen.add(obj.track_id)
            track = self.tracks.get(obj.track_id)
            if track is None:
                state = self._state(obj, frame_time, frame_time, float(obj.score))
                track = _Track(obj.track_id, frame_time, state, state, frame_time, top_score=float(obj.score))
                self.tracks[obj.track_id] = track
                events.append({"type": "new", "before": state, "after": state})
                continue
            track.missed = 0
            track.top_score = max(track.top_score, float(obj.score))
            track.after = self._state(obj, frame_time, track.start_time, track.top_score)
            if self._should_update(track, frame_time):
                events.append({"type": "update", "before": track.published, "after": track.after})
                track.published, track.last_update = track.after, frame_time
        for track_id in [t for t in self.tracks if t not in seen]:
            track = self.tracks[track_id]
            track.missed += 1
            if track.missed >= self.config.end_after_frames:
                events.append(self._end(track, frame_time))
        return events

    def end_all(self, frame_time: float) -> list[dict]:
        """End every active track (the agent is stopping)."""
        return [self._end(t, frame_time) for t in list(self.tracks.values())]

    def _end(self, track: _Track, frame_time: float) -> dict:
        del self.tracks[track.track_id]
        after = {**track.after, "end_time": frame_time, "active": False}
        return {"type": "end", "before": track.published, "after": after}

    def _should_update(self, track: _Track, now: float) -> bool:
        old, new = track.published, track.after
        if new["label"] != old["label"]:
            return True
        if now - track.last_update < self.config.update_every_s:
            return False
        if abs(new["score"] - old["score"]) >= self.config.min_score_change:
            return True
        (ox1, oy1, ox2, oy2), (nx1, ny1, nx2, ny2) = old["box"], new["box"]
        w, h = max(ox2 - ox1, 1.0), max(oy2 - oy1, 1.0)
        shift = max(abs(nx1 - ox1) / w, abs(nx2 - ox2) / w, abs(ny1 - oy1) / h, abs(ny2 - oy2) / h)
        return shift >= self.config.min_box_shift

    def _state(self, obj: OutboxObject, frame_time: float, start_time: float, top_score: float) -> dict:
        return {
            "id": f"{start_time:.6f}-{self.stream_id}-{obj.track_id}", "track_id": obj.track_id,
            "device": self.device_id, "stream": self.stream_id, "label": obj.label, "class_id": obj.class_id,
            "score": round(float(obj.score), 4), "top_score": round(top_score, 4),
            "box": [round(float(v), 1) for v in obj.xyxy], "predicted": bool(obj.predicted),
            "frame_time": frame_time, "start_time": start_time, "end_time": None, "active": True,
        }


@dataclass
class PublisherCounters:
    published: int = 0
    dropped: int = 0
    events: Counter = field(default_factory=Counter)


class MqttPublisher:
    """Publishes the agent's topics; `start(device_id, health)` / `on_frames(records)` / `stop()`.

    The device id is the enrolled id, known only once the link has enrolled: `device_id()` is
    polled by the stats thread, which connects (with the last will) as soon as it returns one.
    Frames committed before that are not published (counted in `dropped`).
    """

    def __init__(self, host: str, port: int, topic_prefix: str = DEFAULT_PREFIX, *,
                 events: TrackEventsConfig | None = None, stats_every_s: float = 5.0, max_queued: int = 1000,
                 keepalive_s: int = 10, login: MqttLogin | None = None):
        self.host, self.port = host, port
        self.login = login or MqttLogin()
        self._tls = self.login.tls_context()  # unreadable files are refused here, at start (MqttSettingsError)
        self.report: ConnectReport | None = None
        """Why the broker connection fails now (`report.last`), once connecting started."""
        self.prefix = topic_prefix.strip("/")
        self.events_config = events or TrackEventsConfig()
        self.stats_every_s = stats_every_s
        self.max_queued = max_queued
        self.keepalive_s = keepalive_s
        self.device_id: str | None = None
        self.counters = PublisherCounters()
        self.connected = threading.Event()
        self._streams: dict[str, TrackEvents] = {}
        self._counts: dict[tuple[str, str], int] = {}
        self._occupancy: dict[tuple[str, str], int] = {}  # (stream, zone): last published
        self._client: mqtt.Client | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._device_fn: Callable[[], str | None] = lambda: None
        self._health_fn: Callable[[], dict] | None = None

    # ---- life cycle ----

    def start(self, device_id: Callable[[], str | None], health: Callable[[], dict] | None = None) -> None:
        self._device_fn, self._health_fn = device_id, health
        HUB.subscribe(self.on_analytics)
        self._thread = threading.Thread(target=self._stats_loop, name="mqtt-stats", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """End the active tracks, publish `offline`, disconnect."""
        HUB.unsubscribe(self.on_analytics)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        client = self._client
        if client is None:
            return
        now = time.time()
        for stream_id, tracker in list(self._streams.items()):
            self._publish_events(stream_id, tracker.end_all(now))
            self._publish_counts(stream_id, tracker)
        info = client.publish(self._topic("available"), "offline", qos=1, retain=True)
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as err:
            logger.debug("mqtt: offline not confirmed: %s", err)
        client.disconnect()
        client.loop_stop()
        logger.info("mqtt: stopped; %d published, %d dropped", self.counters.published, self.counters.dropped)

    def _stats_loop(self) -> None:
        next_stats = 0.0
        while not self._stop.is_set():
            if self._client is None:
                device_id = self._device_fn()
                if device_id:
                    self._connect(device_id)
            elif self._health_fn is not None and time.monotonic() >= next_stats:
                next_stats = time.monotonic() + self.stats_every_s
                try:
                    sample = self._health_fn()
                except Exception as err:  # noqa: BLE001 - a failing sample must not end the publisher
                    logger.warning("mqtt: health sample failed: %s", err)
                else:
                    self._publish(self._topic("stats"), json.dumps(sample), qos=0)
            self._stop.wait(0.2)

    def _connect(self, device_id: str) -> None:
        self.device_id = device_id
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgefleet-agent-{device_id}")
        client.max_queued_messages_set(self.max_queued)
        client.will_set(self._topic("available"), "offline", qos=1, retain=True)
        client.reconnect_delay_set(1, 10)
        self.login.configure(client, self._tls)
        report = self.report = ConnectReport(logger, "mqtt", self.host, self.port, self.login, self._tls)
        client.on_connect = self._on_connect
        client.on_connect_fail = report.on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.connect_async(self.host, self.port, keepalive=self.keepalive_s)
        client.loop_start()
        self._client = client
        logger.info("mqtt: publishing as %s/%s to %s:%d, %s", self.prefix, device_id, self.host, self.port,
                    self.login.describe())

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            if self.report is not None:
                self.report.refused(reason_code)
            return
        client.publish(self._topic("available"), "online", qos=1, retain=True)
        self.connected.set()
        if self.report is not None:
            self.report.connected()
        logger.info("mqtt: connected to %s:%d", self.host, self.port)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if not self._stop.is_set() and self.report is not None:
            self.report.dropped(reason_code)

    # ---- from the loop thread ----

    def on_frames(self, records: Sequence[Record]) -> None:
        """Feed committed records: frames' events and changed label counts, each object's crop JPEG
        (retained). Never blocks. Before the device id is known nothing is tracked or published, so
        every track's first event is `new`."""
        if self._client is None:
            self.counters.dropped += len(records)
            return
        for record in records:
            if isinstance(record, SnapshotRecord):
                if record.kind == "crop":
                    self._publish(self._topic(record.stream_id, record.label.translate(TOPIC_UNSAFE), "snapshot"),
                                  record.jpeg, qos=0, retain=True)
                continue
            if not isinstance(record, OutboxRecord):
                continue  # object events and counts go to the controller only
            tracker = self._streams.get(record.stream_id)
            if tracker is None:
                tracker = self._streams[record.stream_id] = TrackEvents(
                    record.stream_id, self.events_config, self.device_id or "")
            self._publish_events(record.stream_id, tracker.step(record.objects, record.capture_time))
            self._publish_counts(record.stream_id, tracker)

    def on_analytics(self, stream_id: str, events: list[Event], occupancy: dict[str, int]) -> None:
        """A tick's zone events and line crossings of a stream (agent.analytics.HUB); never blocks."""
        for event in events:
            kind, name = ("lines", event.line) if isinstance(event, LineCrossing) else ("zones", event.zone)
            self._publish(self._topic(stream_id, kind, name.translate(TOPIC_UNSAFE)), json.dumps(asdict(event)), qos=1)
        for zone, count in occupancy.items():
            topic = self._topic(stream_id, "zones", zone.translate(TOPIC_UNSAFE), "occupancy")
            if self._occupancy.get((stream_id, zone)) != count and self._publish(topic, str(count), qos=0, retain=True):
                self._occupancy[(stream_id, zone)] = count

    def _publish_events(self, stream_id: str, events: list[dict]) -> None:
        for event in events:
            self.counters.events[event["type"]] += 1
            self._publish(self._topic(stream_id, "events"), json.dumps(event), qos=1)

    def _publish_counts(self, stream_id: str, tracker: TrackEvents) -> None:
        counts = tracker.counts()
        labels = {label for (sid, label) in self._counts if sid == stream_id} | set(counts)
        for label in labels:
            changed = self._counts.get((stream_id, label)) != counts[label]
            topic = self._topic(stream_id, label.translate(TOPIC_UNSAFE))
            if changed and self._publish(topic, str(counts[label]), qos=0, retain=True):
                self._counts[(stream_id, label)] = counts[label]

    def _publish(self, topic: str, payload: str | bytes, qos: int, retain: bool = False) -> bool:
        client = self._client
        if client is None:
            self.counters.dropped += 1
            return False
        try:
            rc = client.publish(topic, payload, qos=qos, retain=retain).rc
        except ValueError as err:  # a topic paho refuses: this message only, never the camera loop
            logger.warning("mqtt: cannot publish to %r: %s", topic, err)
            rc = mqtt.MQTT_ERR_INVAL
        # at QoS 1 a message published while disconnected waits in paho's queue (NO_CONN); a full
        # queue refuses it (QUEUE_SIZE). At QoS 0 nothing waits.
        if rc == mqtt.MQTT_ERR_SUCCESS or (qos > 0 and rc == mqtt.MQTT_ERR_NO_CONN):
            self.counters.published += 1
            return True
        self.counters.dropped += 1
        return False

    def _topic(self, *parts: str) -> str:
        return "/".join((self.prefix, self.device_id or "", *parts))
