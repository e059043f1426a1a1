"""The agent's Prometheus metrics (`edge-agent run|serve --metrics-listen HOST:PORT`), read at scrape time.

Every value comes from the health sample the link already sends with each heartbeat
(`Agent.health_sample()`, safe to call off the loop thread: the link and MQTT threads do)
and from `Agent.plan`, which the loop replaces, never mutates. The text format and the HTTP
endpoint are `fleet.metrics`'s, which is stdlib-only.
"""
from __future__ import annotations

from collections.abc import Callable

from edgefleet.fleet.metrics import MetricsServer, Registry


class AgentMetrics:
    """Gauges refreshed from `health()` and `plan()` on each scrape."""

    def __init__(self, health: Callable[[], dict], plan: Callable[[], dict]):
        self._health = health
        self._plan = plan
        self.registry = Registry()
        r = self.registry
        self.fps = r.gauge("edgefleet_agent_fps", "Frames per second over the last health window, all streams.")
        self.inference_ms = r.gauge("edgefleet_agent_inference_ms",
                                    "Detector milliseconds per call over the last health window.", ["quantile"])
        # A gauge, though it is a running total: it is read from the sources' own counters at scrape time.
        self.frames_dropped = r.gauge("edgefleet_agent_frames_dropped_total",
                                      "Frames the sources dropped because the loop was behind, since start.")
        self.outbox_depth = r.gauge("edgefleet_agent_outbox_depth",
                                    "Committed frames not yet acked by the controller.")
        self.plan_info = r.gauge("edgefleet_agent_plan_info",
                                 "The plan the loop runs now (always 1; the labels carry it).",
                                 ["model", "input", "detect_interval"])
        r.on_scrape(self._collect)

    def _collect(self) -> None:
        sample = self._health()
        self.fps.set(sample.get("fps", 0.0))
        self.inference_ms.replace([({"quantile": "0.5"}, sample.get("inference_ms_p50", 0.0)),
                                   ({"quantile": "0.95"}, sample.get("inference_ms_p95", 0.0))])
        self.frames_dropped.set(sample.get("frames_dropped", 0))
        self.outbox_depth.set(sample.get("outbox_depth", 0))
        plan = self._plan()
        size = f"{plan.get('input_width', 0)}x{plan.get('input_height', 0)}"
        self.plan_info.replace([({"model": plan.get("model", ""), "input": size,
                                  "detect_interval": plan.get("detect_interval", 0)}, 1)])

    def render(self) -> str:
        return self.registry.render()


def serve_metrics(listen: str, health: Callable[[], dict], plan: Callable[[], dict]) -> MetricsServer:
    """Start `GET /metrics` on `listen` (a runner `Agent`'s health sample and plan, or a bare
    inference service's); the caller stops it after the run."""
    server = MetricsServer(AgentMetrics(health, plan).registry, listen)
    server.start()
    return server
