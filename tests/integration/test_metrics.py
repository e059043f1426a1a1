"""Prometheus scrapes of a real controller and a real agent process, over loopback HTTP."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import grpc
import pytest

from edgefleet.v1 import agent_pb2_grpc

from ..conftest import ControllerThread, free_port
from .test_gateway import auth, batch, enroll

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$')


def scrape(port: int) -> dict[str, float]:
    """`name{labels}` -> value, every sample line; also checks each family has HELP and TYPE first."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    samples, typed = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        assert re.sub(r"_(bucket|sum|count)$", "", name) in typed or name in typed, f"{name} has no TYPE"
        samples[name + (labels or "")] = float(value)
    return samples


@pytest.fixture
def metered(tmp_path):
    ctl = ControllerThread(tmp_path / "fleet.db", metrics_listen="127.0.0.1:0")
    yield ctl
    ctl.stop()


def test_controller_counts_ingest_duplicates_and_acks(metered):
    port = metered.controller.metrics_port
    before = scrape(port)
    assert before["edgefleet_frames_ingested_total"] == 0
    assert before['edgefleet_devices{status="online"}'] == 0

    with grpc.insecure_channel(metered.address) as channel:
        device = enroll(channel)
        stub = agent_pb2_grpc.AgentGatewayStub(channel)
        list(stub.PublishDetections(iter([batch(1, 2, 3), batch(4, 5)]), metadata=auth(device.device_token),
                                    timeout=5))
        first = scrape(port)
        # a lost ack: the agent resends 4 and 5 with the new 6
        list(stub.PublishDetections(iter([batch(4, 5, 6)]), metadata=auth(device.device_token), timeout=5))
        after = scrape(port)

    assert first["edgefleet_frames_ingested_total"] == 5
    assert first["edgefleet_detections_ingested_total"] == 5  # one person per frame
    assert first["edgefleet_duplicate_frames_total"] == 0
    assert after["edgefleet_frames_ingested_total"] == 8
    assert after["edgefleet_duplicate_frames_total"] == 2
    assert after["edgefleet_ack_latency_seconds_count"] == 3
    assert after['edgefleet_ack_latency_seconds_bucket{le="+Inf"}'] == 3
    assert after["edgefleet_ack_latency_seconds_sum"] > 0
    assert after['edgefleet_devices{status="online"}'] == 1
    assert after['edgefleet_devices{status="stale"}'] == 0
    assert after['edgefleet_devices{status="offline"}'] == 0
    assert after['edgefleet_watcher_dropped_total{stream="detections"}'] == 0
    assert after['edgefleet_rollouts{state="running"}'] == 0


def test_controller_metrics_404_elsewhere_and_off_by_default(metered, controller):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{metered.controller.metrics_port}/", timeout=5)
    assert err.value.code == 404
    assert controller.controller.metrics_server is None and controller.controller.metrics_port is None


@pytest.mark.slow
def test_a_running_agent_serves_fps_and_its_plan(controller, vtest, tmp_path):
    port = free_port()
    log = tmp_path / "agent.log"
    with log.open("w") as err:
        agent = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.agent.cli", "run", "--controller", controller.address,
             "--source", str(vtest), "--state-dir", str(tmp_path / "agent"), "--enroll-key", "efk_test",
             "--name", "metered-cam", "--loop", "--threads", "1", "--metrics-listen", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=err)
    try:
        samples = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and samples.get("edgefleet_agent_fps", 0) <= 0:
            assert agent.poll() is None, f"agent exited:\n{log.read_text()[-3000:]}"
            try:
                samples = scrape(port)
            except (urllib.error.URLError, ConnectionError):
                pass  # not listening yet: the model loads first
            time.sleep(0.3)
        assert samples.get("edgefleet_agent_fps", 0) > 0, f"no fps scraped:\n{log.read_text()[-3000:]}"
        plan = [k for k, v in samples.items() if k.startswith("edgefleet_agent_plan_info{") and v == 1]
        assert len(plan) == 1 and 'detect_interval="1"' in plan[0] and 'model="' in plan[0], plan
        assert samples['edgefleet_agent_inference_ms{quantile="0.5"}'] > 0
        assert "edgefleet_agent_outbox_depth" in samples
        assert "edgefleet_agent_frames_dropped_total" in samples
    finally:
        agent.terminate()
        agent.wait(timeout=60)
    assert agent.returncode == 0, log.read_text()[-3000:]


@pytest.mark.data
def test_a_bare_inference_service_serves_its_metrics(tmp_path):
    """`edge-agent serve --metrics-listen` without a controller: the detector's timings and the plan."""
    from edgefleet.v1 import inference_pb2, inference_pb2_grpc

    from .test_inference import bus_jpeg

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.agent.cli", "--log-level", "warning", "serve", "--listen", "127.0.0.1:0",
         "--threads", "1", "--metrics-listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert first, proc.stderr.read()[-3000:]
        data = bus_jpeg()
        with grpc.insecure_channel(json.loads(first)["serving"]) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            for _ in range(3):
                stub.Detect(inference_pb2.DetectRequest(image=inference_pb2.Image(encoded=data)), timeout=30)
        samples = scrape(port)
        assert samples['edgefleet_agent_inference_ms{quantile="0.5"}'] > 0
        plan = [k for k, v in samples.items() if k.startswith("edgefleet_agent_plan_info{") and v == 1]
        assert len(plan) == 1 and 'detect_interval="1"' in plan[0] and 'model="yolov3-tiny' in plan[0], plan
        assert samples["edgefleet_agent_frames_dropped_total"] == 0
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]


def test_serve_refuses_mqtt_without_a_controller():
    proc = subprocess.run([sys.executable, "-m", "edgefleet.agent.cli", "serve", "--listen", "127.0.0.1:0",
                           "--mqtt", "127.0.0.1:1883"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--mqtt needs --controller" in proc.stderr
