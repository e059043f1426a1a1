"""The Prometheus text format (0.0.4) as written by fleet.metrics, and the agent's gauges."""
from __future__ import annotations

import math
import urllib.error
import urllib.request

import pytest

from edgefleet.agent.metrics import AgentMetrics
from edgefleet.fleet.metrics import (
    ControllerMetrics,
    Counter,
    Gauge,
    Histogram,
    MetricsError,
    MetricsServer,
    Registry,
    escape_help,
    escape_label_value,
    format_value,
    parse_listen,
)


@pytest.mark.parametrize("raw, escaped", [
    ("plain", "plain"),
    ('say "hi"', 'say \\"hi\\"'),
    ("C:\\models", "C:\\\\models"),
    ("two\nlines", "two\\nlines"),
    ('\\"\n', '\\\\\\"\\n'),
])
def test_label_values_escape_backslash_quote_and_newline(raw, escaped):
    assert escape_label_value(raw) == escaped


def test_help_escapes_backslash_and_newline_but_not_quotes():
    assert escape_help('a "b"\\c\nd') == 'a "b"\\\\c\\nd'


@pytest.mark.parametrize("value, text", [
    (0, "0"), (3.0, "3"), (2.5, "2.5"), (0.005, "0.005"), (-1, "-1"),
    (math.inf, "+Inf"), (-math.inf, "-Inf"), (math.nan, "NaN"),
])
def test_values(value, text):
    assert format_value(value) == text


def test_counter_renders_help_type_and_escaped_labels():
    c = Counter("edgefleet_things_total", "Things.\nSecond line", ["path"])
    c.inc(path='a"b')
    c.inc(2, path='a"b')
    assert c.render() == (
        "# HELP edgefleet_things_total Things.\\nSecond line\n"
        "# TYPE edgefleet_things_total counter\n"
        'edgefleet_things_total{path="a\\"b"} 3\n'
    )


def test_counter_without_labels_reads_zero_before_the_first_count_and_never_goes_down():
    c = Counter("edgefleet_x_total", "X.")
    assert c.render().splitlines()[-1] == "edgefleet_x_total 0"
    with pytest.raises(MetricsError):
        c.inc(-1)


@pytest.mark.parametrize("make", [
    lambda: Counter("bad-name", "h"),
    lambda: Gauge("ok", "h", ["bad-label"]),
    lambda: Gauge("ok", "h", ["__reserved"]),
    lambda: Histogram("ok", "h", [1.0], ["le"]),
    lambda: Histogram("ok", "h", []),
])
def test_invalid_names_and_buckets_are_refused(make):
    with pytest.raises(MetricsError):
        make()


def test_labels_must_match_the_metric():
    g = Gauge("edgefleet_g", "G.", ["status"])
    with pytest.raises(MetricsError, match="status"):
        g.set(1, state="x")


def test_gauge_replace_drops_label_sets_that_are_gone():
    g = Gauge("edgefleet_g", "G.", ["status"])
    g.replace([({"status": "online"}, 2), ({"status": "stale"}, 1)])
    g.replace([({"status": "online"}, 3)])
    assert g.render().splitlines()[2:] == ['edgefleet_g{status="online"} 3']


def test_histogram_buckets_are_cumulative_and_end_with_inf_sum_and_count():
    h = Histogram("edgefleet_latency_seconds", "Latency.", [0.1, 0.01, 1])
    for value in (0.005, 0.05, 0.05, 0.5, 7):
        h.observe(value)
    assert h.render() == (
        "# HELP edgefleet_latency_seconds Latency.\n"
        "# TYPE edgefleet_latency_seconds histogram\n"
        'edgefleet_latency_seconds_bucket{le="0.01"} 1\n'
        'edgefleet_latency_seconds_bucket{le="0.1"} 3\n'
        'edgefleet_latency_seconds_bucket{le="1"} 4\n'
        'edgefleet_latency_seconds_bucket{le="+Inf"} 5\n'
        "edgefleet_latency_seconds_sum 7.605\n"
        "edgefleet_latency_seconds_count 5\n"
    )


def test_histogram_with_labels_puts_le_last():
    h = Histogram("edgefleet_h", "H.", [1], ["stream"])
    h.observe(0.5, stream="cam0")
    lines = h.render().splitlines()[2:]
    assert lines == ['edgefleet_h_bucket{stream="cam0",le="1"} 1', 'edgefleet_h_bucket{stream="cam0",le="+Inf"} 1',
                     'edgefleet_h_sum{stream="cam0"} 0.5', 'edgefleet_h_count{stream="cam0"} 1']


def test_registry_refuses_duplicates_and_survives_a_failing_collector():
    r = Registry()
    r.counter("edgefleet_a_total", "A.")
    with pytest.raises(MetricsError):
        r.counter("edgefleet_a_total", "again")

    def broken() -> None:
        raise RuntimeError("store is gone")

    r.on_scrape(broken)
    assert "edgefleet_a_total 0" in r.render()


def test_controller_metrics_before_anything_happened():
    metrics = ControllerMetrics(lambda: {"online": 2, "offline": 1})
    text = metrics.render()
    for line in (
        'edgefleet_devices{status="online"} 2', 'edgefleet_devices{status="stale"} 0',
        'edgefleet_devices{status="offline"} 1', "edgefleet_frames_ingested_total 0",
        "edgefleet_detections_ingested_total 0", "edgefleet_duplicate_frames_total 0",
        'edgefleet_watcher_dropped_total{stream="detections"} 0', 'edgefleet_watcher_dropped_total{stream="fleet"} 0',
        'edgefleet_ack_latency_seconds_bucket{le="+Inf"} 0', "edgefleet_ack_latency_seconds_count 0",
        'edgefleet_rollouts{state="running"} 0',
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
    for line in ("edgefleet_agent_fps 12.5", 'edgefleet_agent_inference_ms{quantile="0.5"} 20',
                 'edgefleet_agent_inference_ms{quantile="0.95"} 31.25', "edgefleet_agent_frames_dropped_total 4",
                 "edgefleet_agent_outbox_depth 17",
                 'edgefleet_agent_plan_info{model="yolo\\"v8n",input="640x384",detect_interval="2"} 1'):
        assert line in lines, line


@pytest.mark.parametrize("value", ["9100", ":9100", "host:port", "host:70000", "host:-1"])
def test_bad_listen_addresses_are_refused(value):
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen(value)


def test_server_serves_metrics_and_404_elsewhere():
    r = Registry()
    r.counter("edgefleet_a_total", "A.").inc(5)
    server = MetricsServer(r, "127.0.0.1:0")
    port = server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            assert reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            assert "edgefleet_a_total 5" in reply.read().decode().splitlines()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
        assert err.value.code == 404
    finally:
        server.stop()
