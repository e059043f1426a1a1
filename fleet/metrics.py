"""The controller's Prometheus metrics, `ControllerMetrics`, on prometheus_client (see `edgefleet.common.metrics`).

The servicers and the hub count inline, on the event loop, through `Instrument`s: a
prometheus_client metric whose labels are given as keywords (`inc(2, stream="fleet")`).
Devices per presence status are read at scrape time by a collector on the HTTP thread.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import GaugeMetricFamily

from edgefleet.common.metrics import ScrapeCollector, render

from .rollout_store import RolloutState

# From 1 ms to 10 s: an ack waits for one SQLite commit on the store's thread.
ACK_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

DEVICE_STATUSES = ("online", "stale", "offline")  # fleet.presence.Status values
STREAMS = ("detections", "fleet")  # the Hub's topics


@dataclass(frozen=True)
class Sample:
    """One exposed series of an `Instrument`: the name's suffix after the metric's, its labels, its value."""

    suffix: str  # "", "_total", "_bucket", "_sum", "_count"
    labels: tuple[tuple[str, str], ...]
    value: float


class Instrument:
    """A prometheus_client Counter, Gauge or Histogram whose labels are given as keywords.

    `inc`, `set` and `observe` take the label values as keyword arguments (none for an unlabelled
    metric); labels that do not match the metric's are a ValueError, as is a negative count.
    """

    def __init__(self, metric: MetricWrapperBase):
        self.metric = metric

    def _child(self, labels: Mapping[str, object]):
        return self.metric.labels(**labels) if labels else self.metric

    def inc(self, amount: float = 1.0, **labels) -> None:
        self._child(labels).inc(amount)

    def set(self, value: float, **labels) -> None:
        self._child(labels).set(value)

    def observe(self, value: float, **labels) -> None:
        self._child(labels).observe(value)

    def samples(self) -> list[Sample]:
        return [Sample(s.name[len(family.name):], tuple(s.labels.items()), s.value)
                for family in self.metric.collect() for s in family.samples]

    def value(self, **labels) -> float:
        """A counter's or gauge's value for these labels (0 for a label set never counted)."""
        wanted = {name: str(value) for name, value in labels.items()}
        return next((s.value for s in self.samples() if s.suffix in ("", "_total") and dict(s.labels) == wanted), 0.0)


class ControllerMetrics:
    """What the controller counts. The servicers and the hub increment inline; `devices` is read at scrape.

    `device_statuses`, when given, is called on the HTTP thread at scrape time and returns
    the number of devices per status name; it must not touch the event loop.
    """

    def __init__(self, device_statuses: Callable[[], Mapping[str, int]] | None = None):
        self.registry = r = CollectorRegistry()
        self._device_statuses = device_statuses
        r.register(ScrapeCollector(self._devices))
        self.frames_ingested = Instrument(Counter(
            "edgefleet_frames_ingested_total",
            "Frames received in PublishDetections batches, duplicates included (stored = this - duplicates).",
            registry=r))
        self.detections_ingested = Instrument(Counter(
            "edgefleet_detections_ingested_total",
            "Detected objects in the frames received, duplicates included.", registry=r))
        self.duplicate_frames = Instrument(Counter(
            "edgefleet_duplicate_frames_total",
            "Frames received that were stored already (a replay after a lost ack); acked, not stored again.",
            registry=r))
        self.ack_latency = Instrument(Histogram(
            "edgefleet_ack_latency_seconds",
            "Seconds from a detection batch arriving to its ack being sent (store commit included).",
            buckets=ACK_LATENCY_BUCKETS_S, registry=r))
        self.artifact_bytes_served = Instrument(Counter(
            "edgefleet_artifact_bytes_served_total", "Artifact bytes sent to devices by FetchArtifact.", registry=r))
        self.artifact_streams = Instrument(Gauge(
            "edgefleet_artifact_streams",
            "FetchArtifact streams: sending, or waiting for one of the --fetch-streams slots.", ["state"], registry=r))
        for state in ("active", "waiting"):
            self.artifact_streams.set(0, state=state)
        self.watcher_dropped = Instrument(Counter(
            "edgefleet_watcher_dropped_total",
            "Items dropped for a slow watcher (its queue was full), by stream.", ["stream"], registry=r))
        for stream in STREAMS:  # read 0 before the first drop
            self.watcher_dropped.inc(0, stream=stream)
        self.rollouts = Instrument(Gauge("edgefleet_rollouts", "Model rollouts by state.", ["state"], registry=r))
        self.set_rollouts({})

    def set_rollouts(self, counts: dict) -> None:
        """Rollouts per state (a `RolloutState` -> count mapping); every state is exported, 0 when none."""
        for state in RolloutState:
            self.rollouts.set(counts.get(state, 0), state=state.name.lower())

    def _devices(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("edgefleet_devices", "Enrolled devices by presence status, at scrape time.",
                                   labels=["status"])
        if self._device_statuses is not None:
            counts = self._device_statuses()
            for status in DEVICE_STATUSES:
                family.add_metric([status], counts.get(status, 0))
        yield family

    def render(self) -> str:
        return render(self.registry)
