"""The agent's Prometheus metrics (`edge-agent run|serve --metrics-listen HOST:PORT`), read at scrape time.

Every value comes from the health sample the link already sends with each heartbeat
(`Agent.health_sample()`, safe to call off the loop thread: the link and MQTT threads do)
and from `Agent.plan`, which the loop replaces, never mutates. The families are built by a
prometheus_client collector on each scrape; the endpoint is `edgefleet.common.metrics`'s.
The zone and line families are read from agent.analytics' running totals (`TOTALS`), the object
and snapshot families from agent.objects' (`OBJECT_TOTALS`).
"""
from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from edgefleet.common.metrics import MetricsServer, ScrapeCollector, render

from .analytics import TOTALS, Totals
from .objects import OBJECT_TOTALS, ObjectTotals


class AgentMetrics:
    """Gauges built from `health()` and `plan()` on each scrape, in a registry of their own."""

    def __init__(self, health: Callable[[], dict], plan: Callable[[], dict], totals: Totals = TOTALS,
                 objects: ObjectTotals = OBJECT_TOTALS):
        self._health = health
        self._plan = plan
        self._totals = totals
        self._objects = objects
        self.registry = CollectorRegistry()
        self.registry.register(ScrapeCollector(self._families))

    def _families(self) -> list[Metric]:
        sample = self._health()
        plan = self._plan()
        inference_ms = GaugeMetricFamily("edgefleet_agent_inference_ms",
                                         "Detector milliseconds per call over the last health window.",
                                         labels=["quantile"])
        inference_ms.add_metric(["0.5"], sample.get("inference_ms_p50", 0.0))
        inference_ms.add_metric(["0.95"], sample.get("inference_ms_p95", 0.0))
        plan_info = GaugeMetricFamily("edgefleet_agent_plan_info",
                                      "The plan the loop runs now (always 1; the labels carry it).",
                                      labels=["model", "input", "detect_interval"])
        size = f"{plan.get('input_width', 0)}x{plan.get('input_height', 0)}"
        plan_info.add_metric([str(plan.get("model", "")), size, str(plan.get("detect_interval", 0))], 1)
        return [
            GaugeMetricFamily("edgefleet_agent_fps", "Frames per second over the last health window, all streams.",
                              value=sample.get("fps", 0.0)),
            inference_ms,
            # A gauge, though it is a running total: it is read from the sources' own counters at scrape time.
            GaugeMetricFamily("edgefleet_agent_frames_dropped_total",
                              "Frames the sources dropped because the loop was behind, since start.",
                              value=sample.get("frames_dropped", 0)),
            GaugeMetricFamily("edgefleet_agent_outbox_depth", "Committed frames not yet acked by the controller.",
                              value=sample.get("outbox_depth", 0)),
            plan_info,
            *self._zone_families(),
            *self._object_families(),
        ]

    def _zone_families(self) -> list[Metric]:
        """Line crossings and zone entries since start, and each zone's occupancy now (agent.analytics)."""
        crossings, entries, occupancy = self._totals.snapshot()
        crossed = CounterMetricFamily("edgefleet_agent_crossings", "Line crossings counted since start.",
                                      labels=["stream", "line", "label", "direction"])
        for key, count in sorted(crossings.items()):
            crossed.add_metric(list(key), count)
        entered = CounterMetricFamily("edgefleet_agent_zone_entries", "Zone entries counted since start.",
                                      labels=["stream", "zone", "label"])
        for key, count in sorted(entries.items()):
            entered.add_metric(list(key), count)
        inside = GaugeMetricFamily("edgefleet_agent_zone_occupancy", "Tracked objects in each zone now.",
                                   labels=["stream", "zone"])
        for key, count in sorted(occupancy.items()):
            inside.add_metric(list(key), count)
        return [crossed, entered, inside]

    def _object_families(self) -> list[Metric]:
        """Object events and snapshots since start (agent.objects, agent.snapshots)."""
        events, snapshots = self._objects.snapshot()
        sent = CounterMetricFamily("edgefleet_agent_object_events", "Object events (new, update, end) since start.",
                                   labels=["stream", "type"])
        for key, count in sorted(events.items()):
            sent.add_metric(list(key), count)
        made = CounterMetricFamily("edgefleet_agent_snapshots", "Objects given snapshots (a crop and a frame).",
                                   labels=["stream"])
        dropped = CounterMetricFamily("edgefleet_agent_snapshots_dropped",
                                      "Ended objects left without snapshots: the rate cap, a full queue, an error.",
                                      labels=["stream", "reason"])
        for (stream, outcome), count in sorted(snapshots.items()):
            if outcome == "made":
                made.add_metric([stream], count)
            else:
                dropped.add_metric([stream, outcome.removeprefix("dropped_")], count)
        return [sent, made, dropped]

    def render(self) -> str:
        return render(self.registry)


def serve_metrics(listen: str, health: Callable[[], dict], plan: Callable[[], dict]) -> MetricsServer:
    """Start `GET /metrics` on `listen` (a runner `Agent`'s health sample and plan, or a bare
    inference service's); the caller stops it after the run."""
    server = MetricsServer(AgentMetrics(health, plan).registry, listen)
    server.start()
    return server
