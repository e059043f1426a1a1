"""The agent's Prometheus metrics (`edge-agent run|serve --metrics-listen HOST:PORT`), read at scrape time.

Every value comes from the health sample the link already sends with each heartbeat
(`Agent.health_sample()`, safe to call off the loop thread: the link and MQTT threads do)
and from `Agent.plan`, which the loop replaces, never mutates. The families are built by a
prometheus_client collector on each scrape; the endpoint is `edgefleet.common.metrics`'s.
"""
from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily

from edgefleet.common.metrics import MetricsServer, ScrapeCollector, render


class AgentMetrics:
    """Gauges built from `health()` and `plan()` on each scrape, in a registry of their own."""

    def __init__(self, health: Callable[[], dict], plan: Callable[[], dict]):
        self._health = health
        self._plan = plan
        self.registry = CollectorRegistry()
        self.registry.register(ScrapeCollector(self._families))

    def _families(self) -> list[GaugeMetricFamily]:
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
        ]

    def render(self) -> str:
        return render(self.registry)


def serve_metrics(listen: str, health: Callable[[], dict], plan: Callable[[], dict]) -> MetricsServer:
    """Start `GET /metrics` on `listen` (a runner `Agent`'s health sample and plan, or a bare
    inference service's); the caller stops it after the run."""
    server = MetricsServer(AgentMetrics(health, plan).registry, listen)
    server.start()
    return server
