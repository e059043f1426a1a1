"""The Prometheus text format (0.0.4) as prometheus_client writes the controller's and the agent's metrics."""
from __future__ import annotations

import math
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily

from edgefleet.agent.metrics import AgentMetrics
from edgefleet.common.metrics import MetricsServer, ScrapeCollector, parse_listen, render
from edgefleet.fleet.metrics import ControllerMetrics, Instrument


def sample_lines(registry: CollectorRegistry) -> list[str]:
    return [line for line in render(registry).splitlines() if not line.startswith("#")]


@pytest.mark.parametrize("raw, escaped", [
    ("plain", "plain"),
    ('say "hi"', 'say \\"hi\\"'),
    ("C:\\models", "C:\\\\models"),
    ("two\nlines", "two\\nlines"),
    ('\\"\n', '\\\\\\"\\n'),
])
def test_label_values_escape_backslash_quote_and_newline(raw, escaped):
    r = CollectorRegistry()
    Gauge("edgefleet_g", "G.", ["path"], registry=r).labels(path=raw).set(1)
    assert sample_lines(r) == [f'edgefleet_g{{path="{escaped}"}} 1.0']


def test_help_escapes_backslash_and_newline_but_not_quotes():
    r = CollectorRegistry()
    Gauge("edgefleet_g", 'a "b"\\c\nd', registry=r)
    assert render(r).splitlines()[0] == '# HELP edgefleet_g a "b"\\\\c\\nd'


@pytest.mark.parametrize("value, text", [
    (0, "0.0"), (3.0, "3.0"), (2.5, "2.5"), (0.005, "0.005"), (-1, "-1.0"),
    (math.inf, "+Inf"), (-math.inf, "-Inf"), (math.nan, "NaN"),
])
def test_values(value, text):
    r = CollectorRegistry()
    Gauge("edgefleet_g", "G.", registry=r).set(value)
    assert sample_lines(r) == [f"edgefleet_g {text}"]


def test_counter_renders_help_type_and_escaped_labels():
    r = CollectorRegistry()
    c = Instrument(Counter("edgefleet_things_total", "Things.\nSecond line", ["path"], registry=r))
    c.inc(path='a"b')
    c.inc(2, path='a"b')
    assert render(r) == (
        "# HELP edgefleet_things_total Things.\\nSecond line\n"
        "# TYPE edgefleet_things_total counter\n"
        'edgefleet_things_total{path="a\\"b"} 3.0\n'
    )
    assert c.value(path='a"b') == 3 and c.value(path="other") == 0


def test_counter_without_labels_reads_zero_before_the_first_count_and_never_goes_down():
    r = CollectorRegistry()
    c = Instrument(Counter("edgefleet_x_total", "X.", registry=r))
    assert render(r).splitlines()[-1] == "edgefleet_x_total 0.0"
    with pytest.raises(ValueError):
        c.inc(-1)


@pytest.mark.parametrize("make", [
    lambda r: Gauge("ok", "h", ["__reserved"], registry=r),
    lambda r: Histogram("ok", "h", ["le"], buckets=[1.0], registry=r),
    lambda r: Histogram("ok", "h", buckets=[], registry=r),
])
def test_reserved_labels_and_missing_buckets_are_refused(make):
    with pytest.raises(ValueError):
        make(CollectorRegistry())


def test_labels_must_match_the_metric():
    g = Instrument(Gauge("edgefleet_g", "G.", ["status"], registry=CollectorRegistry()))
    with pytest.raises(ValueError, match="label"):
        g.set(1, state="x")


def test_a_scrape_collector_drops_label_sets_that_are_gone():
    statuses = [{"online": 2, "stale": 1}, {"online": 3}]

    def gather():
        family = GaugeMetricFamily("edgefleet_g", "G.", labels=["status"])
        for status, count in statuses.pop(0).items():
            family.add_metric([status], count)
        yield family

    r = CollectorRegistry()
    r.register(ScrapeCollector(gather))
    assert sample_lines(r) == ['edgefleet_g{status="online"} 2.0', 'edgefleet_g{status="stale"} 1.0']
    assert sample_lines(r) == ['edgefleet_g{status="online"} 3.0']


def test_histogram_buckets_are_cumulative_and_end_with_inf_count_and_sum():
    r = CollectorRegistry()
    h = Instrument(Histogram("edgefleet_latency_seconds", "Latency.", buckets=[0.01, 0.1, 1], registry=r))
    for value in (0.005, 0.05, 0.05, 0.5, 7):
        h.observe(value)
    assert render(r) == (
        "# HELP edgefleet_latency_seconds Latency.\n"
        "# TYPE edgefleet_latency_seconds histogram\n"
        'edgefleet_latency_seconds_bucket{le="0.01"} 1.0\n'
        'edgefleet_latency_seconds_bucket{le="0.1"} 3.0\n'
        'edgefleet_latency_seconds_bucket{le="1.0"} 4.0\n'
        'edgefleet_latency_seconds_bucket{le="+Inf"} 5.0\n'
        "edgefleet_latency_seconds_count 5.0\n"
        "edgefleet_latency_seconds_sum 7.605\n"
    )
    assert next(s.value for s in h.samples() if s.suffix == "_count") == 5


def test_histogram_with_labels_carries_them_on_every_series():
    r = CollectorRegistry()
    Instrument(Histogram("edgefleet_h", "H.", ["stream"], buckets=[1], registry=r)).observe(0.5, stream="cam0")
    assert sample_lines(r) == ['edgefleet_h_bucket{le="1.0",stream="cam0"} 1.0',
                               'edgefleet_h_bucket{le="+Inf",stream="cam0"} 1.0',
                               'edgefleet_h_count{stream="cam0"} 1.0', 'edgefleet_h_sum{stream="cam0"} 0.5']


def test_registry_refuses_duplicates_and_survives_a_failing_collector():
    r = CollectorRegistry()
    Counter("edgefleet_a_total", "A.", registry=r)
    with pytest.raises(ValueError):
        Counter("edgefleet_a_total", "again", registry=r)

    def broken():
        raise RuntimeError("store is gone")

    r.register(ScrapeCollector(broken))
    assert "edgefleet_a_total 0.0" in render(r).splitlines()


def test_controllers_in_one_process_count_apart():
    first, second = ControllerMetrics(), ControllerMetrics()
    first.frames_ingested.inc(3)
    assert "edgefleet_frames_ingested_total 3.0" in first.render().splitlines()
    assert "edgefleet_frames_ingested_total 0.0" in second.render().splitlines()
    assert "_created" not in first.render()


def test_controller_metrics_before_anything_happened():
    metrics = ControllerMetrics(lambda: {"online": 2, "offline": 1})
    text = metrics.render()
    for line in (
        'edgefleet_devices{status="online"} 2.0', 'edgefleet_devices{status="stale"} 0.0',
        'edgefleet_devices{status="offline"} 1.0', "edgefleet_frames_ingested_total 0.0",
        "edgefleet_detections_ingested_total 0.0", "edgefleet_duplicate_frames_total 0.0",
        'edgefleet_watcher_dropped_total{stream="detections"} 0.0',
        'edgefleet_watcher_dropped_total{stream="fleet"} 0.0',
        'edgefleet_ack_latency_seconds_bucket{le="+Inf"} 0.0', "edgefleet_ack_latency_seconds_count 0.0",
        'edgefleet_rollouts{state="running"} 0.0',
        "# TYPE edgefleet_ack_latency_seconds histogram",
    ):
        assert line in text.splitlines(), line


def test_hub_counts_drops_of_a_full_watcher_per_stream():
    import asyncio

    from edgefleet.fleet.hub import Hub

    async def scenario() -> ControllerMetrics:
        metrics = ControllerMetrics()
        hub = Hub(metrics)
        hub.detections.watch(maxsize=1)
        hub.detections.publish(["a", "b", "c"])
        return metrics

    metrics = asyncio.run(scenario())
    assert metrics.watcher_dropped.value(stream="detections") == 2
    assert metrics.watcher_dropped.value(stream="fleet") == 0


def test_agent_metrics_from_a_health_sample_and_plan():
    sample = {"fps": 12.5, "inference_ms_p50": 20.0, "inference_ms_p95": 31.25, "frames_dropped": 4,
              "outbox_depth": 17}
    plan = {"model": 'yolo"v8n', "input_width": 640, "input_height": 384, "detect_interval": 2}
    lines = AgentMetrics(lambda: sample, lambda: plan).render().splitlines()
    for line in ("edgefleet_agent_fps 12.5", 'edgefleet_agent_inference_ms{quantile="0.5"} 20.0',
                 'edgefleet_agent_inference_ms{quantile="0.95"} 31.25', "edgefleet_agent_frames_dropped_total 4.0",
                 "edgefleet_agent_outbox_depth 17.0",
                 'edgefleet_agent_plan_info{detect_interval="2",input="640x384",model="yolo\\"v8n"} 1.0'):
        assert line in lines, line


@pytest.mark.parametrize("value", ["9100", ":9100", "host:port", "host:70000", "host:-1"])
def test_bad_listen_addresses_are_refused(value):
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen(value)


def test_server_serves_metrics_and_404_elsewhere():
    r = CollectorRegistry()
    Counter("edgefleet_a_total", "A.", registry=r).inc(5)
    server = MetricsServer(r, "127.0.0.1:0")
    port = server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            assert reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            assert "edgefleet_a_total 5.0" in reply.read().decode().splitlines()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
        assert err.value.code == 404
    finally:
        server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
