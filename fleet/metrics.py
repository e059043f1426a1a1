"""Prometheus metrics without a client library: the text format (0.0.4) and a tiny HTTP endpoint.

The first half is generic and stdlib-only (the agent's `agent.metrics` uses it too):
`Counter`, `Gauge` and `Histogram` hold values behind a lock, so the event loop can count
while the HTTP thread scrapes; a `Registry` renders them, after running its collectors (the
gauges that are computed at scrape time); `MetricsServer` serves `GET /metrics` from a
`ThreadingHTTPServer` on a background thread.

The second half is the controller's metric set, `ControllerMetrics`.
"""
from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .addresses import parse_host_port
from .rollout_store import RolloutState

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

# From 1 ms to 10 s: an ack waits for one SQLite commit on the store's thread.
ACK_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class MetricsError(ValueError):
    """A metric or label name that Prometheus would reject, or labels that do not match the metric."""


# ---- the text format ----

def escape_label_value(value: str) -> str:
    """Backslash, double quote and line feed are escaped in label values (format 0.0.4)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """Backslash and line feed are escaped in HELP text; quotes are not."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def format_labels(labels: Iterable[tuple[str, str]]) -> str:
    pairs = [f'{name}="{escape_label_value(value)}"' for name, value in labels]
    return "{" + ",".join(pairs) + "}" if pairs else ""


@dataclass(frozen=True)
class Sample:
    suffix: str  # "", "_bucket", "_sum", "_count"
    labels: tuple[tuple[str, str], ...]
    value: float


class Metric:
    """One metric family: a name, its HELP text, label names, and one value per label set."""

    type = "untyped"

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = ()):
        if not METRIC_NAME.match(name):
            raise MetricsError(f"metric name {name!r} is not a valid Prometheus name")
        self.labelnames = tuple(labelnames)
        for label in self.labelnames:
            if not LABEL_NAME.match(label) or label.startswith("__"):
                raise MetricsError(f"label name {label!r} of {name} is not a valid Prometheus label")
        self.name = name
        self.help = help
        self._lock = threading.Lock()

    def _key(self, labels: Mapping[str, object]) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise MetricsError(f"{self.name} takes labels {list(self.labelnames)}, got {sorted(labels)}")
        return tuple(str(labels[name]) for name in self.labelnames)

    def _labels(self, key: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        return tuple(zip(self.labelnames, key))

    def samples(self) -> list[Sample]:
        raise NotImplementedError

    def render(self) -> str:
        lines = [f"# HELP {self.name} {escape_help(self.help)}", f"# TYPE {self.name} {self.type}"]
        for sample in self.samples():
            lines.append(f"{self.name}{sample.suffix}{format_labels(sample.labels)} {format_value(sample.value)}")
        return "\n".join(lines) + "\n"


class Counter(Metric):
    """Only goes up. Without labels it reads 0 from the start; with labels, a label set once counted."""

    type = "counter"

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = (), initial: Iterable[Mapping] = ()):
        super().__init__(name, help, labelnames)
        self._values: dict[tuple[str, ...], float] = {} if self.labelnames else {(): 0.0}
        for labels in initial:  # label sets that should read 0 before their first count
            self._values[self._key(labels)] = 0.0

    def inc(self, amount: float = 1.0, **labels) -> None:
        if amount < 0:
            raise MetricsError(f"{self.name} is a counter; cannot add {amount}")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def samples(self) -> list[Sample]:
        with self._lock:
            return [Sample("", self._labels(k), v) for k, v in sorted(self._values.items())]


class Gauge(Metric):
    """Goes up and down; `replace()` swaps every label set at once (for values computed at scrape time)."""

    type = "gauge"

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = ()):
        super().__init__(name, help, labelnames)
        self._values: dict[tuple[str, ...], float] = {}

    def set(self, value: float, **labels) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def replace(self, values: Iterable[tuple[Mapping[str, object], float]]) -> None:
        fresh = {self._key(labels): float(value) for labels, value in values}
        with self._lock:
            self._values = fresh

    def samples(self) -> list[Sample]:
        with self._lock:
            return [Sample("", self._labels(k), v) for k, v in sorted(self._values.items())]


class Histogram(Metric):
    """Counts observations into buckets; renders cumulative `_bucket{le=...}` up to `+Inf`, `_sum`, `_count`."""

    type = "histogram"

    def __init__(self, name: str, help: str, buckets: Iterable[float], labelnames: Iterable[str] = ()):
        super().__init__(name, help, labelnames)
        if "le" in self.labelnames:
            raise MetricsError(f"{name}: 'le' is reserved for histogram buckets")
        bounds = sorted(float(b) for b in buckets)
        if not bounds or len(set(bounds)) != len(bounds):
            raise MetricsError(f"{name}: buckets must be distinct and at least one, got {bounds}")
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.bounds = tuple(bounds)
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}  # counts per bucket, [sum]
        if not self.labelnames:
            self._series[()] = ([0] * len(self.bounds), [0.0])

    def observe(self, value: float, **labels) -> None:
        key = self._key(labels)
        index = next((i for i, bound in enumerate(self.bounds) if value <= bound), len(self.bounds) - 1)  # NaN: +Inf
        with self._lock:
            counts, total = self._series.setdefault(key, ([0] * len(self.bounds), [0.0]))
            counts[index] += 1
            total[0] += value

    def samples(self) -> list[Sample]:
        out = []
        with self._lock:
            series = [(k, list(counts), total[0]) for k, (counts, total) in sorted(self._series.items())]
        for key, counts, total in series:
            labels = self._labels(key)
            running = 0
            for bound, count in zip(self.bounds, counts):
                running += count
                out.append(Sample("_bucket", (*labels, ("le", format_value(bound))), running))
            out.append(Sample("_sum", labels, total))
            out.append(Sample("_count", labels, running))
        return out


class Registry:
    """The metrics one endpoint serves, and the collectors that refresh scrape-time gauges first."""

    def __init__(self) -> None:
        self._metrics: list[Metric] = []
        self._collectors: list[Callable[[], None]] = []

    def add(self, metric: Metric) -> Metric:
        if any(m.name == metric.name for m in self._metrics):
            raise MetricsError(f"metric {metric.name} is registered twice")
        self._metrics.append(metric)
        return metric

    def counter(self, name: str, help: str, labelnames: Iterable[str] = (), **kwargs) -> Counter:
        return self.add(Counter(name, help, labelnames, **kwargs))

    def gauge(self, name: str, help: str, labelnames: Iterable[str] = ()) -> Gauge:
        return self.add(Gauge(name, help, labelnames))

    def histogram(self, name: str, help: str, buckets: Iterable[float], labelnames: Iterable[str] = ()) -> Histogram:
        return self.add(Histogram(name, help, buckets, labelnames))

    def on_scrape(self, collect: Callable[[], None]) -> None:
        """Run `collect()` before each render; if it fails, the scrape still serves the other metrics."""
        self._collectors.append(collect)

    def render(self) -> str:
        for collect in self._collectors:
            try:
                collect()
            except Exception:  # a failed collector must not take the endpoint down
                logger.exception("metrics collector %s failed", getattr(collect, "__name__", collect))
        return "".join(metric.render() for metric in self._metrics)


# ---- the endpoint ----

def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT` (port 0: a free one) as a (host, port) pair, an IPv6 host without its brackets."""
    host, port = parse_host_port(value, allow_port_zero=True)
    return host.strip("[]"), port


class MetricsServer:
    """`GET /metrics` on a background thread; anything else is 404. `start()` returns the bound port."""

    def __init__(self, registry: Registry, listen: str):
        self.registry = registry
        self.listen = listen
        self.address = parse_listen(listen)
        self.port: int | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        registry = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the http.server hook name
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics is served here")
                    return
                body = registry.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # the http.server signature
                logger.debug("metrics %s: " + format, self.address_string(), *args)

        self._httpd = ThreadingHTTPServer(self.address, Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="metrics-http", daemon=True)
        self._thread.start()
        logger.info("metrics on http://%s:%d/metrics", self._httpd.server_address[0], self.port)
        return self.port

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._httpd = self._thread = None


# ---- the controller's metrics ----

DEVICE_STATUSES = ("online", "stale", "offline")  # fleet.presence.Status values
STREAMS = ("detections", "fleet")  # the Hub's topics


class ControllerMetrics:
    """What the controller counts. The servicers and the hub increment inline; `devices` is set at scrape.

    `device_statuses`, when given, is called on the HTTP thread at scrape time and returns
    the number of devices per status name; it must not touch the event loop.
    """

    def __init__(self, device_statuses: Callable[[], Mapping[str, int]] | None = None):
        self.registry = Registry()
        r = self.registry
        self.devices = r.gauge("edgefleet_devices", "Enrolled devices by presence status, at scrape time.",
                               ["status"])
        self.frames_ingested = r.counter(
            "edgefleet_frames_ingested_total",
            "Frames received in PublishDetections batches, duplicates included (stored = this - duplicates).")
        self.detections_ingested = r.counter(
            "edgefleet_detections_ingested_total",
            "Detected objects in the frames received, duplicates included.")
        self.duplicate_frames = r.counter(
            "edgefleet_duplicate_frames_total",
            "Frames received that were stored already (a replay after a lost ack); acked, not stored again.")
        self.ack_latency = r.histogram(
            "edgefleet_ack_latency_seconds",
            "Seconds from a detection batch arriving to its ack being sent (store commit included).",
            ACK_LATENCY_BUCKETS_S)
        self.artifact_bytes_served = r.counter(
            "edgefleet_artifact_bytes_served_total", "Artifact bytes sent to devices by FetchArtifact.")
        self.artifact_streams = r.gauge(
            "edgefleet_artifact_streams",
            "FetchArtifact streams: sending, or waiting for one of the --fetch-streams slots.", ["state"])
        for state in ("active", "waiting"):
            self.artifact_streams.set(0, state=state)
        self.watcher_dropped = r.counter(
            "edgefleet_watcher_dropped_total",
            "Items dropped for a slow watcher (its queue was full), by stream.",
            ["stream"], initial=[{"stream": s} for s in STREAMS])
        self.rollouts = r.gauge(
            "edgefleet_rollouts",
            "Model rollouts by state.", ["state"])
        self.set_rollouts({})
        self._device_statuses = device_statuses
        r.on_scrape(self._collect_devices)

    def set_rollouts(self, counts: dict) -> None:
        """Rollouts per state (a `RolloutState` -> count mapping); every state is exported, 0 when none."""
        self.rollouts.replace([({"state": s.name.lower()}, counts.get(s, 0)) for s in RolloutState])

    def _collect_devices(self) -> None:
        if self._device_statuses is None:
            return
        counts = self._device_statuses()
        self.devices.replace(({"status": s}, counts.get(s, 0)) for s in DEVICE_STATUSES)

    def render(self) -> str:
        return self.registry.render()
