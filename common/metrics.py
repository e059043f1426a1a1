"""Prometheus metrics for the agent and the controller, on `prometheus_client`.

Each metric set (`fleet.metrics.ControllerMetrics`, `agent.metrics.AgentMetrics`) owns a
`CollectorRegistry` of its own, never the library's global one, so one process (a test) can run
several controllers. Values read at scrape time come from a `ScrapeCollector`, which builds
metric families (`GaugeMetricFamily` …) when Prometheus asks; `MetricsServer` serves one
registry's `GET /metrics` from a wsgiref server on a background thread, and stops cleanly.

`_created` series are disabled for the whole process on import: they would double every
counter's and histogram's lines and nothing here reads them.
"""
from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest, make_wsgi_app
from prometheus_client.metrics_core import Metric

from .addresses import parse_host_port

logger = logging.getLogger(__name__)

disable_created_metrics()

METRICS_PATH = "/metrics"


def render(registry: CollectorRegistry) -> str:
    """The registry in the Prometheus text format (0.0.4), as a scrape without an Accept header gets it."""
    return generate_latest(registry).decode()


class ScrapeCollector:
    """A prometheus_client collector whose families `gather()` builds at each scrape.

    For values read from elsewhere when Prometheus asks (a store, a health sample). `gather()`
    runs on the HTTP thread. If it fails, the error is logged and its families are left out of
    that scrape; the registry's other metrics are still served.
    """

    def __init__(self, gather: Callable[[], Iterable[Metric]]):
        self._gather = gather

    def collect(self) -> list[Metric]:
        try:
            return list(self._gather())
        except Exception:  # a failed collector must not take the endpoint down
            logger.exception("metrics collector %s failed", getattr(self._gather, "__qualname__", self._gather))
            return []


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT` (port 0: a free one) as a (host, port) pair, an IPv6 host without its brackets."""
    host, port = parse_host_port(value, allow_port_zero=True)
    return host.strip("[]"), port


def metrics_app(registry: CollectorRegistry):
    """A WSGI app: prometheus_client's exposition of `registry` on `/metrics`, 404 anywhere else."""
    exposition = make_wsgi_app(registry)

    def app(environ, start_response):
        if environ.get("PATH_INFO") != METRICS_PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"only /metrics is served here\n"]
        return exposition(environ, start_response)

    return app


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingWSGIServer6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _LoggingHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # the http.server signature
        logger.debug("metrics %s: " + format, self.address_string(), *args)


class MetricsServer:
    """`GET /metrics` of one registry on a background thread. `start()` returns the bound port.

    `listen` is HOST:PORT (port 0: a free one); a bad value is a ValueError here, a port that is
    taken an OSError from `start()`.
    """

    def __init__(self, registry: CollectorRegistry, listen: str):
        self.registry = registry
        self.listen = listen
        self.address = parse_listen(listen)
        self.port: int | None = None
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        host, port = self.address
        server_class = _ThreadingWSGIServer6 if ":" in host else _ThreadingWSGIServer
        self._httpd = make_server(host, port, metrics_app(self.registry), server_class, _LoggingHandler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="metrics-http", daemon=True)
        self._thread.start()
        logger.info("metrics on http://%s:%d%s", self._httpd.server_address[0], self.port, METRICS_PATH)
        return self.port

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._httpd = self._thread = None
