"""MQTT with credentials and TLS, for real: a mosquitto started here with a password file and only a
TLS listener (certificates made here), real agent and controller processes, the bridge's trust rule."""
from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgefleet.agent.mqtt import MqttPublisher
from edgefleet.common.mqtt import PASSWORD_ENV, MqttLogin
from edgefleet.fleet.auth import Access
from edgefleet.fleet.mqtt_bridge import BridgeConfig, MqttBridge
from edgefleet.fleet.store import FleetStore

from ..conftest import ROOT, ControllerThread, free_port, require_program, run_cli, wait_for
from ..processes import ControllerProcess
from .test_mqtt import MOSQUITTO
from .test_mqtt import broker as broker  # the plaintext, anonymous broker fixture
from .test_tls import Pki

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
USERS = {"cam": "cam-s3cret", "bridge": "bridge-s3cret"}


@dataclass
class SecureBroker:
    """A mosquitto listening with TLS only (server certificate from `pki`'s CA), refusing anonymous clients."""

    port: int
    pki: Pki
    root: Path

    def password_file(self, user: str, password: str | None = None) -> Path:
        path = self.root / f"{user}.password"
        path.write_text((USERS[user] if password is None else password) + "\n")
        return path

    def login(self, user: str | None = "cam", password: str | None = None, ca: str = "ca") -> MqttLogin:
        return MqttLogin(user, USERS.get(user or "") if password is None else password, self.pki.cert(ca))

    def client(self, user: str, client_id: str) -> mqtt.Client:
        """A connected paho client logged in as `user` over TLS."""
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        login = self.login(user)
        login.configure(client, login.tls_context())
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        return client


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("mqtt-pki"))


@contextlib.contextmanager
def running_broker(root: Path, pki: Pki, *listener: str) -> Iterator[SecureBroker]:
    """mosquitto with the USERS' password file and one TLS listener (plus the `listener` lines)."""
    require_program("the mosquitto broker", MOSQUITTO is not None and Path(MOSQUITTO_PASSWD).exists(),
                    "apt-get install mosquitto (it has mosquitto_passwd; or: make test-broker, which installs it)")
    passwords = root / "mosquitto.passwd"
    for i, (user, password) in enumerate(USERS.items()):
        subprocess.run([MOSQUITTO_PASSWD, *(["-c"] if i == 0 else []), "-b", str(passwords), user, password],
                       check=True, capture_output=True)
    port = free_port()
    conf = root / "mosquitto.conf"
    conf.write_text("\n".join([
        f"user {getpass.getuser()}",  # as root mosquitto would switch to a user that cannot read tmp_path
        "per_listener_settings false", "allow_anonymous false", f"password_file {passwords}", "persistence false",
        f"listener {port} 127.0.0.1", f"cafile {pki.cert('ca')}", f"certfile {pki.cert('server')}",
        f"keyfile {pki.key('server')}", *listener, ""]))
    log_path = root / "mosquitto.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)

    def listening():
        if proc.poll() is not None:
            raise AssertionError(f"mosquitto exited: {log_path.read_text()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(listening, 10, "mosquitto to listen")
        yield SecureBroker(port, pki, root)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def secure_broker(tmp_path, pki) -> Iterator[SecureBroker]:
    with running_broker(tmp_path, pki) as broker:
        yield broker


@pytest.fixture
def certificate_broker(tmp_path, pki) -> Iterator[SecureBroker]:
    """One that also requires a client certificate signed by the CA."""
    with running_broker(tmp_path, pki, "require_certificate true") as broker:
        yield broker


def test_the_broker_really_refuses_anonymous_and_plaintext_clients(secure_broker):
    """What the other tests rely on: without TLS, or without a password, nothing gets through."""
    plain = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="plain")
    let_in, dropped = threading.Event(), threading.Event()
    plain.on_connect = lambda c, u, f, reason, p: not reason.is_failure and let_in.set()
    plain.on_disconnect = lambda *_: dropped.set()
    plain.connect("127.0.0.1", secure_broker.port)
    plain.loop_start()
    try:
        assert dropped.wait(10) and not let_in.is_set(), "a plaintext client was let in"
    finally:
        plain.disconnect()
        plain.loop_stop()
    anonymous = secure_broker.login(None)
    refused = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="anonymous")
    anonymous.configure(client, anonymous.tls_context())
    client.on_connect = lambda c, u, f, reason, p: reason.is_failure and refused.set()
    client.connect("127.0.0.1", secure_broker.port)
    client.loop_start()
    try:
        assert refused.wait(10), "an anonymous client was let in"
    finally:
        client.loop_stop()


def test_a_wrong_password_is_refused_with_the_reason(secure_broker, caplog):
    publisher = MqttPublisher("127.0.0.1", secure_broker.port, login=secure_broker.login("cam", "wrong"))
    bridge = MqttBridge(lambda *a, **kw: None, "127.0.0.1", secure_broker.port,
                        login=secure_broker.login("bridge", "wrong"))
    publisher.start(lambda: "dev-1")
    bridge.start()
    try:
        said = wait_for(lambda: publisher.report and publisher.report.last, 15, "the publisher's refusal")
        assert said.startswith("MQTT broker refused: not authorized"), said
        assert "user 'cam'" in said and "--mqtt-password-file" in said
        assert wait_for(lambda: bridge.report.last, 15, "the bridge's refusal").startswith(
            "MQTT broker refused: not authorized")
        assert not publisher.connected.is_set() and not bridge.connected.is_set()
    finally:
        publisher.stop()
        bridge.stop()
    assert any("MQTT broker refused: not authorized" in r.getMessage() and r.levelname == "ERROR"
               for r in caplog.records)
    assert not any("wrong" in r.getMessage() for r in caplog.records), "the password is never logged"


def test_a_broker_certificate_the_ca_did_not_sign_is_refused_with_the_reason(secure_broker):
    login = secure_broker.login("cam", ca="other-ca")
    publisher = MqttPublisher("127.0.0.1", secure_broker.port, login=login)
    publisher.start(lambda: "dev-1")
    try:
        said = wait_for(lambda: publisher.report and publisher.report.last, 15, "the publisher's TLS failure")
    finally:
        publisher.stop()
    assert f"certificate at 127.0.0.1:{secure_broker.port} is not trusted by the CA in {login.tls_ca}" in said, said
    assert "--mqtt-tls-ca" in said


def test_a_broker_that_requires_a_client_certificate(certificate_broker, pki):
    without = MqttPublisher("127.0.0.1", certificate_broker.port, login=certificate_broker.login("cam"))
    with_cert = MqttLogin("bridge", USERS["bridge"], pki.cert("ca"), pki.cert("client"), pki.key("client"))
    bridge = MqttBridge(lambda *a, **kw: None, "127.0.0.1", certificate_broker.port, login=with_cert)
    without.start(lambda: "dev-1")
    bridge.start()
    try:
        said = wait_for(lambda: without.report and without.report.last, 15, "the publisher's TLS failure")
        assert bridge.connected.wait(15), f"the bridge with a client certificate did not log in: {bridge.report.last}"
    finally:
        without.stop()
        bridge.stop()
    assert said.startswith(f"the MQTT broker at 127.0.0.1:{certificate_broker.port} requires a client certificate")
    assert not without.connected.is_set()


def test_tls_to_a_plaintext_broker_says_so(broker, pki):
    """`broker`: test_mqtt's anonymous mosquitto without TLS."""
    publisher = MqttPublisher("127.0.0.1", broker, login=MqttLogin(tls_ca=pki.cert("ca")))
    publisher.start(lambda: "dev-1")
    try:
        said = wait_for(lambda: publisher.report and publisher.report.last, 15, "the publisher's TLS failure")
    finally:
        publisher.stop()
    assert f"the MQTT broker at 127.0.0.1:{broker} does not speak TLS on this port" in said, said


def test_login_settings_that_cannot_work_are_refused_before_connecting(tmp_path, pki):
    from edgefleet.common.mqtt import MqttSettingsError

    with pytest.raises(MqttSettingsError, match="--mqtt-password-file .*No such file"):
        MqttLogin.from_settings("cam", tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(MqttSettingsError, match="is empty"):
        MqttLogin.from_settings("cam", tmp_path / "empty")
    with pytest.raises(MqttSettingsError, match="no --mqtt-username"):
        MqttLogin.from_settings(None, env={PASSWORD_ENV: "pw"})
    with pytest.raises(MqttSettingsError, match="--mqtt-tls-cert and --mqtt-tls-key go together"):
        MqttLogin.from_settings(tls_ca=pki.cert("ca"), tls_cert=pki.cert("client"))
    with pytest.raises(MqttSettingsError, match="--mqtt-tls-ca .*"):
        MqttLogin.from_settings(tls_ca=tmp_path / "missing.pem")
    (tmp_path / "pw").write_text("from-file\n")
    login = MqttLogin.from_settings("cam", tmp_path / "pw", env={PASSWORD_ENV: "from-env"})
    assert login.password == "from-file", "the file wins over the environment"
    assert MqttLogin.from_settings("cam", env={PASSWORD_ENV: "from-env"}).password == "from-env"
    assert "from-file" not in repr(login) and "from-file" not in login.describe()


def test_serve_refuses_mqtt_settings_that_cannot_work(tmp_path):
    missing = run_cli("edgefleet.fleet.cli", "serve", "--listen", "127.0.0.1:0", "--db", str(tmp_path / "f.db"),
                      "--mqtt", "127.0.0.1:1883", "--mqtt-username", "bridge",
                      "--mqtt-password-file", str(tmp_path / "nope"), timeout=60)
    assert missing.returncode == 2 and "--mqtt-password-file" in missing.stderr, missing.stderr
    without = run_cli("edgefleet.fleet.cli", "serve", "--listen", "127.0.0.1:0", "--db", str(tmp_path / "f.db"),
                      "--mqtt-allow", "*", timeout=60)
    assert without.returncode == 2 and "need --mqtt HOST:PORT" in without.stderr, without.stderr


@pytest.mark.slow
def test_serve_bridges_only_allowed_devices_over_tls_with_a_password(secure_broker, tmp_path, monkeypatch):
    """The real `edgefleet serve`: password from the environment, TLS, `--mqtt-allow porch-*`."""
    db = tmp_path / "fleet.db"
    store = FleetStore(db)
    token = store.create_operator_token("test", Access.ADMIN)
    store.close()
    monkeypatch.setenv(PASSWORD_ENV, USERS["bridge"])
    ctl = ControllerProcess(db, free_port(), tmp_path, "--mqtt", f"127.0.0.1:{secure_broker.port}",
                            "--mqtt-username", "bridge", "--mqtt-tls-ca", str(secure_broker.pki.cert("ca")),
                            "--mqtt-allow", "porch-*").start()
    pub = secure_broker.client("cam", "test-devices")
    try:
        stats = json.dumps({"fps": 6.5, "frames_total": 12, "streams": []}).encode()
        for device in ("porch-cam", "rogue-cam"):
            pub.publish(f"edgefleet/{device}/available", b"online", qos=1, retain=True).wait_for_publish(5)
            pub.publish(f"edgefleet/{device}/stats", stats, qos=1).wait_for_publish(5)

        def listed(device: str = "porch-cam"):
            out = run_cli("edgefleet.fleet.cli", "devices", "--controller", ctl.address, "--json",
                          env={"EDGEFLEET_TOKEN": token}, timeout=30)
            assert out.returncode == 0, out.stderr
            return device in out.stdout and {d["device_id"]: d for d in json.loads(out.stdout)}

        shown = wait_for(listed, 30, "porch-cam in `edgefleet devices`")

        def stats_stored():  # stats are not retained: sent again, as an agent does every few seconds, until the
            pub.publish("edgefleet/porch-cam/stats", stats, qos=1).wait_for_publish(5)  # bridge has subscribed
            shown = listed()
            return shown and shown["porch-cam"]["health"].get("fps") == 6.5 and shown

        shown = wait_for(stats_stored, 30, "porch-cam's stats in the store")
        assert "rogue-cam" not in shown, "a device no --mqtt-allow matches joined the fleet"
        wait_for(lambda: "ignoring MQTT device 'rogue-cam'" in ctl.log(), 10, "the ignored device in the log")

        # revoked, an allowed MQTT-only device is no longer updated
        revoke = run_cli("edgefleet.fleet.cli", "device", "revoke", "porch-cam", "--controller", ctl.address,
                         env={"EDGEFLEET_TOKEN": token}, timeout=30)
        assert revoke.returncode == 0, revoke.stderr
        pub.publish("edgefleet/porch-cam/stats", json.dumps({"fps": 9.25, "streams": []}).encode(),
                    qos=1).wait_for_publish(5)
        pub.publish("edgefleet/porch-two/available", b"online", qos=1).wait_for_publish(5)  # heard after it
        shown = wait_for(lambda: listed("porch-two"), 30, "porch-two in `edgefleet devices`")
        assert shown["porch-cam"]["health"]["fps"] == 6.5, "a revoked MQTT-only device was updated"
        assert USERS["bridge"] not in ctl.log(), "the password is never logged"
    finally:
        pub.disconnect()
        pub.loop_stop()
        ctl.stop()


def _agent(controller: ControllerThread, vtest: Path, state: Path, log: Path, *mqtt_args: str,
           env: dict | None = None) -> subprocess.Popen:
    with log.open("w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "edgefleet.agent.cli", "run", "--controller", controller.address,
             "--source", str(vtest), "--state-dir", str(state), "--enroll-key", "efk_test", "--loop",
             "--threads", "1", *mqtt_args], stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT, env=env)


def _stop(agent: subprocess.Popen) -> None:
    if agent.poll() is None:
        agent.terminate()
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait(10)


@pytest.mark.slow
def test_a_real_agent_publishes_with_a_password_over_tls_and_the_bridge_hears_it(secure_broker, tmp_path, vtest):
    bridge_login = secure_broker.login("bridge")
    ctl = ControllerThread(tmp_path / "fleet.db", mqtt=BridgeConfig("127.0.0.1", secure_broker.port,
                                                                   login=bridge_login, allow=("*",)))
    bridge = ctl.controller.bridge
    log = tmp_path / "agent.log"
    agent = _agent(ctl, vtest, tmp_path / "agent", log, "--mqtt", f"127.0.0.1:{secure_broker.port}",
                   "--mqtt-username", "cam", "--mqtt-password-file", str(secure_broker.password_file("cam")),
                   "--mqtt-tls-ca", str(secure_broker.pki.cert("ca")))
    try:
        assert bridge.connected.wait(15), f"the bridge did not log in: {bridge.report.last}"

        def heard():
            if agent.poll() is not None:
                raise AssertionError(f"the agent exited ({agent.returncode}):\n{log.read_text()[-3000:]}")
            return bridge.received >= 3 and bridge.received

        wait_for(heard, 120, "the agent's messages at the bridge")
        devices = ctl.controller.store.list_devices()
        assert len(devices) == 1 and not devices[0].hardware_id.startswith("mqtt:"), \
            "the enrolled agent is one device, kept by its session, not a second MQTT-only one"
        assert bridge.malformed == 0 and bridge.ignored == 0
        assert "mqtt: connected to" in log.read_text()
    finally:
        _stop(agent)
        ctl.stop()
    text = log.read_text()
    assert USERS["cam"] not in text, "the password is never logged"
    assert "refused" not in text and "not trusted" not in text


@pytest.mark.slow
def test_a_real_agent_with_a_wrong_password_says_so_and_keeps_reporting(secure_broker, tmp_path, vtest):
    ctl = ControllerThread(tmp_path / "fleet.db")
    log = tmp_path / "agent.log"
    env = {**os.environ, PASSWORD_ENV: "not-the-password"}
    agent = _agent(ctl, vtest, tmp_path / "agent", log, "--mqtt", f"127.0.0.1:{secure_broker.port}",
                   "--mqtt-username", "cam", "--mqtt-tls-ca", str(secure_broker.pki.cert("ca")), env=env)
    try:
        def said():
            if agent.poll() is not None:
                raise AssertionError(f"the agent exited ({agent.returncode}):\n{log.read_text()[-3000:]}")
            return "MQTT broker refused: not authorized" in log.read_text()

        wait_for(said, 120, "the refusal in the agent's log")
        wait_for(lambda: any(d.health.get("frames_total") for d in ctl.controller.store.list_devices()), 60,
                 "the agent to keep reporting over gRPC")
        assert "not-the-password" not in log.read_text()
    finally:
        _stop(agent)
        ctl.stop()



def test_the_tls_context_verifies_the_broker(pki):
    context = MqttLogin(tls_ca=pki.cert("ca")).tls_context()
    assert context is not None and context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED


def test_the_agent_takes_the_mqtt_login_from_its_config_file(tmp_path):
    from edgefleet.agent.cli import build_parser
    from edgefleet.agent.flags import parse_args

    path = tmp_path / "agent.yaml"
    path.write_text("controller: ctl:50051\nsources: [cam.mp4]\nmqtt: broker:8883\nmqtt-username: cam-07\n"
                    "mqtt_password_file: /etc/edgefleet/mqtt.password\nmqtt-tls-ca: ca.pem\n")
    config = parse_args(build_parser(), ["run", "--config", str(path), "--mqtt-username", "cam-08"]).config
    assert (config.mqtt_username, config.mqtt_password_file, config.mqtt_tls_ca) == (
        "cam-08", Path("/etc/edgefleet/mqtt.password"), Path("ca.pem")), "the flag wins over the file"
    idle = parse_args(build_parser(), ["run", "--controller", "ctl:50051", "--source", "cam.mp4",
                                       "--mqtt-username", "cam"]).config
    assert idle.notes() == ["--mqtt-username: no effect without --mqtt"]


def test_the_agent_exits_2_before_enrolling_when_its_password_file_cannot_be_read(tmp_path, vtest):
    proc = run_cli("edgefleet.agent.cli", "run", "--controller", f"127.0.0.1:{free_port()}", "--source", str(vtest),
                   "--state-dir", str(tmp_path / "agent"), "--enroll-key", "efk_test", "--mqtt", "127.0.0.1:1883",
                   "--mqtt-username", "cam", "--mqtt-password-file", str(tmp_path / "missing"), timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"--mqtt-password-file {tmp_path / 'missing'}: No such file or directory" in proc.stderr
    assert not (tmp_path / "agent" / "identity.json").exists()
