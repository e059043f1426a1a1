"""An agent given several controller addresses moves on when it loses one, and nothing is lost or
stored twice: a real `edge-agent` process dials two loopback proxies in front of one real
controller; the proxy it streams through is killed mid-stream, then the other. Every sequence the
agent produced is stored exactly once. The link in process: a dead address first in the list, TLS
checked against the name an endpoint was resolved from."""
from __future__ import annotations

import asyncio
import datetime
import re
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgefleet.adaptive.plan import DevicePlan
from edgefleet.adaptive.probe import HardwareProfile
from edgefleet.agent.health import HealthSample
from edgefleet.agent.link import Link
from edgefleet.agent.messages import Hello
from edgefleet.fleet.tls import ServerTLS

from ..conftest import ControllerThread, free_port, wait_for
from ..mjpeg_server import MjpegServer
from ..processes import outbox_state
from ..tcp_proxy import TcpProxy
from ..unit.test_engines import tiny_onnx
from .test_resilience import AgentProcess, assert_exactly_once, stored_sequences

SWITCH_BOUND_S = 5.0
"""The agent is on another replica within this long of losing one (issue 21's acceptance bound)."""


def scene(count: int = 30) -> list[np.ndarray]:
    """Frames of a box moving across a grey field (the camera's loop)."""
    frames = []
    for i in range(count):
        frame = np.full((240, 320, 3), 90, np.uint8)
        frame[60:140, 10 + 8 * i:70 + 8 * i] = (40, 200, 240)
        frames.append(frame)
    return frames


def until(predicate, timeout: float, what: str) -> float:
    """Poll `predicate` every 10 ms; the monotonic time it first held (AssertionError after `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def switch(gone: TcpProxy, other: TcpProxy, db: Path) -> tuple[float, float]:
    """Kill `gone` (its connections closed, its port refusing) while the agent streams through it:
    seconds until the agent connected through `other`, and until a frame it produced after the
    kill was stored."""
    accepted = other.accepted
    highest = max(stored_sequences(db))
    wait_for(lambda: max(stored_sequences(db)) > highest, 30, "frames streaming before the kill")
    highest = max(stored_sequences(db))
    killed = time.monotonic()
    gone.stop()
    connected = until(lambda: other.accepted > accepted, 30, "the agent dialling the other proxy")
    stored = until(lambda: max(stored_sequences(db)) > highest, 30, "frames stored through the other proxy")
    return connected - killed, stored - killed


@pytest.mark.slow
def test_agent_moves_to_the_other_controller_address_and_stores_every_frame_once(tmp_path):
    ctl = ControllerThread(tmp_path / "fleet.db")
    target = ("127.0.0.1", ctl.port)
    proxies = [TcpProxy(target).start(), TcpProxy(target).start()]
    camera = MjpegServer(scene(), fps=25).start()
    state = tmp_path / "agent"
    agent = AgentProcess(",".join(p.address for p in proxies), camera.url, state,
                         "--model", str(tiny_onnx(tmp_path / "tiny.onnx")), "--threads", "1",
                         "--backoff-max-s", "2", "--drain-timeout", "30", log=tmp_path / "agent.log")
    db = tmp_path / "fleet.db"
    try:
        wait_for(lambda: len(stored_sequences(db)) >= 20, 60, "the first frames")
        first = next(i for i, p in enumerate(proxies) if p.accepted)  # where the rotation began
        live, other = proxies[first], proxies[1 - first]
        times = [switch(live, other, db)]
        proxies[first] = live = TcpProxy(target, listen_port=live.port).start()  # the replica is back
        times.append(switch(other, live, db))
        code, summary, stderr = agent.finish(terminate=True)
        assert code == 0, stderr
        produced = summary["acked_sequence"]  # records of every kind (objects too), frames among them
        assert produced == outbox_state(state)[1]
        assert summary["outbox_left"] == 0
        assert_exactly_once(db, summary["device_id"], produced, summary["frames"])
        switched = re.findall(r"connected to controller (\S+), switched from (\S+): (.+)", stderr)
        assert [(to, gone) for to, gone, _ in switched] == [
            (proxies[1 - first].address, proxies[first].address), (proxies[first].address, proxies[1 - first].address)]
        assert "Traceback" not in stderr
        print(f"\nswitch times (connected, first frame stored after the kill): "
              f"{', '.join(f'{c:.2f} s / {s:.2f} s' for c, s in times)}")
        assert all(connected < SWITCH_BOUND_S for connected, _ in times), times
    finally:
        agent.ensure_dead()
        camera.stop()
        for proxy in proxies:
            proxy.stop()
        ctl.stop()


# ---- the link in process ----

def link(address: str, state: Path, credentials: grpc.ChannelCredentials | None = None) -> Link:
    return Link(controller=address, state_dir=state, outbox_path=state / "outbox.db", enroll_key="efk_test",
                name="failover", hello=lambda: Hello(HardwareProfile(), DevicePlan(), [], time.time()),
                health=HealthSample, credentials=credentials, backoff_max_s=1.0)


def connect(lk: Link, timeout: float = 20.0) -> None:
    lk.start()
    deadline = time.monotonic() + timeout
    while not lk.connected.is_set() and lk.fatal is None and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_dead_address_in_the_list_is_passed_over_for_enrollment_and_the_session(controller, tmp_path):
    dead = f"127.0.0.1:{free_port()}"
    lk = link(f"{dead},{controller.address}", tmp_path)
    try:
        connect(lk)
        assert lk.fatal is None
        assert lk.connected.is_set(), lk.last_error
        assert lk.endpoint is not None and lk.endpoint.target == controller.address
    finally:
        lk.stop()
    assert controller.controller.store.list_devices()[0].device_id == lk.identity.device_id
    assert lk.identity.controller == f"{dead},{controller.address}"


def test_an_address_that_accepts_and_never_answers_is_passed_over(controller, tmp_path, caplog):
    """A stalled proxy takes the TCP connection and forwards nothing (a replica that hangs): tried
    first, it fails to connect, and the link moves on to the live controller."""
    stalled = TcpProxy(("127.0.0.1", controller.port)).start()
    stalled.stall()
    lk = link(f"{stalled.address},{controller.address}", tmp_path)
    rotation = lk.replicas.rotation
    rotation.connected(next(e for e in rotation.round()[0] if e.target == controller.address))  # it comes last
    try:
        connect(lk)
        assert lk.connected.is_set(), lk.last_error
        assert lk.endpoint is not None and lk.endpoint.target == controller.address
    finally:
        lk.stop()
        stalled.stop()
    assert stalled.accepted >= 1, "the stalled address was tried first"
    assert f"controller {stalled.address}: " in caplog.text


@pytest.mark.parametrize("to, timeout, stop, expected", [
    ("controller", None, False, "ready"),
    ("refused", None, False, "failed"),
    ("stalled", 0.3, False, "timeout"),  # before gRPC's own wait for the server's first frame ends
    ("stalled", None, True, "stopped"),
])
def test_connecting_a_channel_says_how_it_went(controller, to, timeout, stop, expected):
    from edgefleet.agent.replicas import connect as connect_channel

    stalled = TcpProxy(("127.0.0.1", controller.port)).start()
    stalled.stall()
    target = {"controller": controller.address, "refused": f"127.0.0.1:{free_port()}", "stalled": stalled.address}[to]

    async def attempt() -> str:
        stopping = asyncio.Event()
        if stop:
            asyncio.get_running_loop().call_later(0.3, stopping.set)
        async with grpc.aio.insecure_channel(target) as channel:
            return await connect_channel(channel, timeout, stopping)

    try:
        assert asyncio.run(attempt()) == expected
    finally:
        stalled.stop()


def _certificates(root: Path, dns_names: list[str]) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for `dns_names` only (no IP address): (ca, cert, key) files."""
    now = datetime.datetime.now(datetime.timezone.utc)

    def issue(subject: str, key, issuer: str, issuer_key, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]),
                                            critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    paths = root / "ca.pem", root / "server.pem", root / "server.key"
    paths[0].write_bytes(issue("ca", ca_key, "ca", ca_key, True).public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(issue("server", key, "ca", ca_key, False).public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_tls_checks_each_endpoint_against_the_name_it_was_resolved_from(tmp_path):
    """`localhost:PORT` is dialled at 127.0.0.1 and checked against "localhost", which the
    certificate names; `127.0.0.1:PORT` is checked against 127.0.0.1, which it does not."""
    ca, cert, key = _certificates(tmp_path, ["localhost"])
    ctl = ControllerThread(tmp_path / "fleet.db", tls=ServerTLS(cert, key))
    credentials = grpc.ssl_channel_credentials(ca.read_bytes())
    by_name = link(f"localhost:{ctl.port}", tmp_path / "by-name", credentials)
    by_ip = link(f"127.0.0.1:{ctl.port}", tmp_path / "by-ip", credentials)
    for state in (tmp_path / "by-name", tmp_path / "by-ip"):
        state.mkdir()
    try:
        connect(by_name)
        assert by_name.connected.is_set(), by_name.last_error
        assert by_name.endpoint is not None and by_name.endpoint.target == f"127.0.0.1:{ctl.port}"
        connect(by_ip, timeout=3.0)
        assert not by_ip.connected.is_set() and by_ip.identity is None
        assert "UNAVAILABLE" in by_ip.last_error, by_ip.last_error
    finally:
        by_name.stop()
        by_ip.stop()
        ctl.stop()
