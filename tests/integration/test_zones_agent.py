"""Zones and lines with real processes: an `edge-agent run` on vtest.avi with a counting line and a zone in
agent.yaml reports the line's crossings and the zone's entries and occupancy on its Prometheus endpoint;
pixel coordinates outside the frame stop it; the MQTT publisher sends the events to a real mosquitto."""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.error

import pytest

from ..conftest import free_port
from ..unit.test_engines import tiny_onnx
from .test_metrics import scrape
from .test_mqtt import broker  # noqa: F401, F811  (the fixture: a mosquitto of the test's own)

CONFIG = """\
analytics:
  cam0:
    lines: {middle: {points: [[0.0, 0.6], [1.0, 0.6]], labels: [person]}}
    zones: {left: {polygon: [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]}}
"""


@pytest.mark.slow
@pytest.mark.data
def test_an_agent_counts_line_crossings_and_zone_entries(controller, vtest, tmp_path):
    port = free_port()
    config = tmp_path / "agent.yaml"
    config.write_text(CONFIG)
    log = tmp_path / "agent.log"
    with log.open("w") as err:
        agent = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.agent.cli", "run", "--config", str(config), "--controller",
             controller.address, "--source", str(vtest), "--state-dir", str(tmp_path / "agent"),
             "--enroll-key", "efk_test", "--name", "counting-cam", "--loop", "--threads", "1",
             "--metrics-listen", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=err)
    try:
        samples: dict[str, float] = {}
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not (_crossings(samples, "in") and _crossings(samples, "out")):
            assert agent.poll() is None, f"agent exited:\n{log.read_text()[-3000:]}"
            try:
                samples = scrape(port)
            except (urllib.error.URLError, ConnectionError):
                pass  # not listening yet: the model loads first
            time.sleep(0.5)
        assert _crossings(samples, "in") and _crossings(samples, "out"), \
            f"no crossings both ways: {_zone_samples(samples)}\n{log.read_text()[-3000:]}"
        entries = [v for k, v in samples.items() if k.startswith("edgefleet_agent_zone_entries_total{")
                   and 'zone="left"' in k and 'stream="cam0"' in k]
        assert sum(entries) >= 1, _zone_samples(samples)
        assert 'edgefleet_agent_zone_occupancy{stream="cam0",zone="left"}' in samples
    finally:
        agent.terminate()
        agent.wait(timeout=60)
    assert agent.returncode == 0, log.read_text()[-3000:]


def _crossings(samples: dict[str, float], direction: str) -> float:
    key = f'edgefleet_agent_crossings_total{{direction="{direction}",label="person",line="middle",stream="cam0"}}'
    return samples.get(key, 0.0)


def _zone_samples(samples: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in samples.items() if "crossings" in k or "zone_" in k}


@pytest.mark.slow
def test_pixel_coordinates_outside_the_frame_stop_the_agent_at_the_first_frame(controller, tmp_path):
    config = tmp_path / "agent.yaml"
    config.write_text("analytics:\n  cam0:\n    units: pixels\n    lines: {door: {points: [[10, 400], [900, 400]]}}\n")
    agent = subprocess.run(
        [sys.executable, "-m", "edgefleet.agent.cli", "run", "--config", str(config), "--controller",
         controller.address, "--source", "synthetic://640x480?objects=3", "--state-dir", str(tmp_path / "agent"),
         "--enroll-key", "efk_test", "--name", "pixel-cam", "--max-frames", "20",
         "--model", str(tiny_onnx(tmp_path / "tiny.onnx"))],
        capture_output=True, text=True, timeout=120)
    assert agent.returncode == 2, agent.stderr[-3000:]
    assert "analytics of stream 'cam0': line 'door': point (900, 400) is outside the 640x480 frame" in agent.stderr


def test_zone_events_crossings_and_occupancy_reach_a_real_mosquitto(broker):  # noqa: F811
    """The MQTT publisher hears the loop's Analytics (agent.analytics.HUB) and publishes each event
    on its zone's or line's topic, and the zone's occupancy retained."""
    import json

    import numpy as np

    from edgefleet.agent.analytics import Analytics
    from edgefleet.agent.mqtt import MqttPublisher
    from edgefleet.agent.zones import StreamAnalytics

    from ..conftest import wait_for
    from .test_mqtt import Recorder

    recorder = Recorder(broker)
    publisher = MqttPublisher("127.0.0.1", broker)
    publisher.start(lambda: "dev1")
    try:
        wait_for(publisher.connected.is_set, 10, "the publisher to connect")
        analytics = Analytics({"cam0": StreamAnalytics.model_validate({
            "units": "pixels", "lines": {"door": {"points": [[100, 500], [900, 500]]}},
            "zones": {"shop": {"polygon": [[0, 0], [1000, 0], [1000, 450], [0, 450]]}}})}, totals=None)
        for i, y in enumerate([400, 420, 600, 620]):  # inside the shop, then down across the door
            analytics.update("cam0", i, 1000.0 + i, (1000, 1000), np.array([[480, y - 100, 520, y]], float),
                             np.array([7]), ["person"])
        crossing = wait_for(lambda: recorder.get("edgefleet/dev1/cam0/lines/door"), 10, "the crossing")
        assert json.loads(crossing[0]) | {"time": 0} == {
            "stream": "cam0", "line": "door", "segment": 0, "direction": "in", "track_id": 7, "label": "person",
            "frame_index": 2, "time": 0}
        zone = wait_for(lambda: len(recorder.get("edgefleet/dev1/cam0/zones/shop")) == 2
                        and recorder.get("edgefleet/dev1/cam0/zones/shop"), 10, "enter and exit")
        assert [(e["kind"], e["occupancy"], e["dwell_s"]) for e in map(json.loads, zone)] == [
            ("enter", 1, 0.0), ("exit", 0, 2.0)]
        wait_for(lambda: recorder.get("edgefleet/dev1/cam0/zones/shop/occupancy") == ["1", "0"], 10,
                 "the occupancy, 1 then 0")
    finally:
        publisher.stop()
        recorder.close()
