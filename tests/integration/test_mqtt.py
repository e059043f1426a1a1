"""MQTT for real: mosquitto started here on a free loopback port, a real agent process, a real bridge."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections import defaultdict

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest

from edgefleet.fleet.channel import open_channel
from edgefleet.fleet.mqtt_bridge import BridgeConfig
from edgefleet.v1 import fleet_pb2, fleet_pb2_grpc

from ..conftest import ROOT, ControllerThread, free_port, require_program, wait_for

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)


@pytest.fixture
def broker(tmp_path):
    """A mosquitto of our own on 127.0.0.1:<free port>, anonymous, nothing persisted. Yields the port.

    Without mosquitto the test skips, or fails when CI is set (`make test` installs it on Debian)."""
    require_program("the mosquitto broker", MOSQUITTO is not None,
                    "apt-get install mosquitto (or: make test-broker, which installs it)")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    log = (tmp_path / "mosquitto.log").open("w")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)

    def listening():
        if proc.poll() is not None:
            raise AssertionError(f"mosquitto exited: {(tmp_path / 'mosquitto.log').read_text()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(listening, 10, "mosquitto to listen")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


class Recorder:
    """A paho subscriber keeping every message per topic (decoded; `raw` keeps the bytes)."""

    def __init__(self, port: int, topic: str = "edgefleet/#"):
        self.messages: dict[str, list[str]] = defaultdict(list)
        self.raw: dict[str, list[bytes]] = defaultdict(list)
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-recorder")
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "the recorder did not subscribe"

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages[message.topic].append(message.payload.decode(errors="replace"))
            self.raw[message.topic].append(bytes(message.payload))

    def get(self, topic: str) -> list[str]:
        with self._lock:
            return list(self.messages[topic])

    def get_bytes(self, topic: str) -> list[bytes]:
        with self._lock:
            return list(self.raw[topic])

    def topics(self) -> list[str]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_each_object_s_crop_is_published_retained_on_its_label_s_snapshot_topic(broker):
    """Committed records reach MQTT: a crop JPEG, byte for byte, retained on <device>/<stream>/<label>/snapshot
    (the annotated frame, object events and counts are not published); a client arriving later gets the latest."""
    from edgefleet.agent.mqtt import MqttPublisher
    from edgefleet.common.records import CountRecord, CountRow, ObjectEventRecord, SnapshotRecord, TrackedObject

    ok, jpeg = cv2.imencode(".jpg", np.full((40, 30, 3), 200, np.uint8))
    crop = SnapshotRecord("cam0", "1000-abc123", "crop", "person", 1000.0, jpeg.tobytes(), 0.9, sequence=3)
    frame = SnapshotRecord("cam0", "1000-abc123", "frame", "person", 1000.0, b"frame jpeg", 0.9, sequence=4)
    newer = SnapshotRecord("cam0", "1001-def456", "crop", "person", 1001.0, b"\xff\xd8newer", 0.8, sequence=6)
    car = SnapshotRecord("cam1", "1002-0a0b0c", "crop", "car/suv", 1002.0, b"\xff\xd8car", 0.7, sequence=7)
    obj = TrackedObject("1000-abc123", "cam0", 1, "person", 0, 999.0, 1000.0, 0.9, (0.0, 0.0, 1.0, 1.0))
    recorder = Recorder(broker)
    publisher = MqttPublisher("127.0.0.1", broker)
    publisher.start(lambda: "dev1")
    try:
        wait_for(publisher.connected.is_set, 10, "the publisher to connect")
        publisher.on_frames([ObjectEventRecord("end", obj, 2), crop, frame,
                             CountRecord([CountRow("cam0", 960, "line", "door", "person", "in", 1)], 5)])
        topic = "edgefleet/dev1/cam0/person/snapshot"
        assert wait_for(lambda: recorder.get_bytes(topic), 10, "the crop") == [jpeg.tobytes()]
        publisher.on_frames([newer, car])
        wait_for(lambda: len(recorder.get_bytes(topic)) == 2, 10, "the newer crop")
        wait_for(lambda: recorder.get_bytes("edgefleet/dev1/cam1/car_suv/snapshot"), 10, "the car's crop")
        assert sorted(recorder.topics()) == ["edgefleet/dev1/available", "edgefleet/dev1/cam0/person/snapshot",
                                             "edgefleet/dev1/cam1/car_suv/snapshot"]
    finally:
        publisher.stop()
        recorder.close()
    late = Recorder(broker, "edgefleet/dev1/cam0/person/snapshot")
    try:
        assert wait_for(lambda: late.get_bytes(topic), 10, "the retained crop") == [b"\xff\xd8newer"]
    finally:
        late.close()


@pytest.mark.slow
def test_agent_publishes_frigate_topics_and_its_last_will(broker, controller, vtest, tmp_path):
    recorder = Recorder(broker)
    log = tmp_path / "agent.log"
    with log.open("w") as err:
        agent = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.agent.cli", "run", "--controller", controller.address,
             "--source", str(vtest), "--state-dir", str(tmp_path / "agent"), "--enroll-key", "efk_test",
             "--name", "mqtt-cam", "--loop", "--threads", "1", "--mqtt", f"127.0.0.1:{broker}"],
            stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
    try:
        def device_id():
            if agent.poll() is not None:
                raise AssertionError(f"the agent exited ({agent.returncode}):\n{log.read_text()[-3000:]}")
            return next((t.split("/")[1] for t in recorder.topics() if t.endswith("/available")), None)

        device = wait_for(device_id, 120, "the agent's availability")
        available = f"edgefleet/{device}/available"
        assert recorder.get(available)[0] == "online"
        assert controller.controller.store.get_device(device).hostname == "mqtt-cam", "topics use the enrolled id"

        events_topic = f"edgefleet/{device}/cam0/events"

        def event_types():
            return {json.loads(p)["type"] for p in recorder.get(events_topic)}

        wait_for(lambda: device_id() and event_types() >= {"new", "update", "end"}, 150,
                 f"new, update and end events (so far {event_types()})")
        events = [json.loads(p) for p in recorder.get(events_topic)]
        first = events[0]
        assert first["type"] == "new" and first["before"] == first["after"]
        after = first["after"]
        assert after["stream"] == "cam0" and after["device"] == device and after["label"]
        assert len(after["box"]) == 4 and 0 < after["score"] <= 1
        by_id = defaultdict(list)
        for event in events:
            by_id[event["after"]["id"]].append(event["type"])
        for event_id, types in by_id.items():
            assert types[0] == "new" and types.count("new") == 1, f"{event_id}: {types}"
            assert "end" not in types[:-1], f"{event_id}: nothing after its end: {types}"

        stats = wait_for(lambda: recorder.get(f"edgefleet/{device}/stats"), 30, "a stats message")
        sample = json.loads(stats[-1])
        assert sample["frames_total"] > 0 and sample["streams"][0]["stream_id"] == "cam0"
        person = recorder.get(f"edgefleet/{device}/cam0/person")
        assert person and all(v.isdigit() for v in person), "the per-label count is a number"
        snapshots = wait_for(lambda: recorder.get_bytes(f"edgefleet/{device}/cam0/person/snapshot"), 120,
                             "an ended person's snapshot")
        crop = cv2.imdecode(np.frombuffer(snapshots[0], np.uint8), cv2.IMREAD_COLOR)
        assert crop is not None and max(crop.shape[:2]) <= 320 and len(snapshots[0]) <= 100_000

        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        wait_for(lambda: recorder.get(available)[-1] == "offline", 15, "the last will (offline)")
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)
        recorder.close()

    # availability is retained: a client arriving now learns the agent is offline
    late = Recorder(broker, f"edgefleet/{device}/available")
    try:
        assert wait_for(lambda: late.get(f"edgefleet/{device}/available"), 10, "the retained availability") == [
            "offline"]
    finally:
        late.close()


def test_the_bridge_brings_mqtt_only_devices_into_the_fleet(broker, tmp_path):
    ctl = ControllerThread(tmp_path / "fleet.db",
                           mqtt=BridgeConfig("127.0.0.1", broker, allow=("porch-cam", "shed-*")))
    bridge = ctl.controller.bridge
    try:
        assert bridge.connected.wait(10), "the bridge did not connect"
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-device")
        pub.connect("127.0.0.1", broker)
        pub.loop_start()
        messages = [
            ("edgefleet/porch-cam/available", b"online"),
            ("edgefleet/porch-cam/stats", json.dumps({"fps": 7.5, "frames_total": 30,
                                                     "streams": [{"stream_id": "cam0", "frames": 30}]}).encode()),
            ("edgefleet/porch-cam/cam0/events", json.dumps(
                {"type": "new", "before": {}, "after": {"label": "person", "score": 0.9}}).encode()),
            # malformed: counted, logged, and the bridge carries on
            ("edgefleet/porch-cam/stats", b"{not json"),
            ("edgefleet/porch-cam/stats", b'{"fps": "fast"}'),
            ("edgefleet/porch-cam/available", b"sideways"),
            ("edgefleet/porch-cam/cam0/events", b'{"type": "exploded"}'),
            ("edgefleet/porch-cam/cam0/events", b"\xff\xfe\x00"),
            ("edgefleet/shed-cam/available", b"online"),  # after the malformed ones: still bridged
            ("edgefleet/barn-cam/available", b"online"),  # no --mqtt-allow matches: ignored, not malformed
        ]
        for topic, payload in messages:
            pub.publish(topic, payload, qos=1).wait_for_publish(5)

        with open_channel(ctl.address, token=ctl.operator_token) as channel:
            control = fleet_pb2_grpc.FleetControlStub(channel)

            def devices():
                found = {d.device_id: d for d in control.ListDevices(fleet_pb2.ListDevicesRequest(), timeout=5).devices}
                return found if {"porch-cam", "shed-cam"} <= set(found) else None

            found = wait_for(devices, 15, "the MQTT-only devices in the fleet")
            porch = found["porch-cam"]
            assert porch.health.fps == pytest.approx(7.5) and porch.health.frames_total == 30
            assert list(porch.streams) == ["cam0"]
            assert porch.status == fleet_pb2.ONLINE
            assert "barn-cam" not in found
        assert wait_for(lambda: bridge.malformed == 5 or None, 10, "the malformed count")
        assert bridge.ignored_devices == {"barn-cam"}
        assert bridge.connected.is_set(), "the bridge is still connected"

        pub.publish("edgefleet/porch-cam/available", b"offline", qos=1).wait_for_publish(5)
        wait_for(lambda: ctl.controller.store.get_device("porch-cam").labels.get("available") == "offline", 10,
                 "offline to reach the store")
        pub.disconnect()
        pub.loop_stop()
    finally:
        ctl.stop()
