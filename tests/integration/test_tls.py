"""TLS and mutual TLS with real certificates (made here with `cryptography`) against a real controller."""
from __future__ import annotations

import datetime
import ipaddress
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.fleet.channel import open_channel
from edgefleet.fleet.tls import ClientTLS, ServerTLS
from edgefleet.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, fleet_pb2_grpc

from ..conftest import ROOT, ControllerThread, run_cli
from .test_gateway import auth, batch


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(subject: str, key, issuer_name: x509.Name, issuer_key, *, ca=False, server=False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject)).issuer_name(issuer_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
    elif server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


class Pki:
    """A CA with a server and a client certificate, and a second CA with its own client: files in `root`."""

    def __init__(self, root: Path):
        self.root = root
        for ca in ("ca", "other-ca"):
            key = ec.generate_private_key(ec.SECP256R1())
            self._write(ca, _issue(ca, key, _name(ca), key, ca=True), key)
        self._leaf("server", "ca", server=True)
        self._leaf("client", "ca")
        self._leaf("rogue-client", "other-ca")

    def _leaf(self, name: str, ca: str, server: bool = False) -> None:
        ca_cert = x509.load_pem_x509_certificate(self.cert(ca).read_bytes())
        ca_key = serialization.load_pem_private_key(self.key(ca).read_bytes(), password=None)
        key = ec.generate_private_key(ec.SECP256R1())
        self._write(name, _issue(name, key, ca_cert.subject, ca_key, server=server), key)

    def _write(self, name: str, cert: x509.Certificate, key) -> None:
        self.cert(name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key(name).write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    def cert(self, name: str) -> Path:
        return self.root / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.root / f"{name}.key"

    def client(self, ca: str = "ca", cert: str | None = None) -> ClientTLS:
        return ClientTLS(self.cert(ca), self.cert(cert) if cert else None, self.key(cert) if cert else None)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def list_devices(address: str, token: str, tls: ClientTLS | None) -> grpc.StatusCode:
    with open_channel(address, token=token, tls=tls) as channel:
        try:
            fleet_pb2_grpc.FleetControlStub(channel).ListDevices(fleet_pb2.ListDevicesRequest(), timeout=5)
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


@pytest.fixture
def tls_controller(tmp_path, pki):
    ctl = ControllerThread(tmp_path / "fleet.db", tls=ServerTLS(pki.cert("server"), pki.key("server")))
    yield ctl
    ctl.stop()


@pytest.fixture
def mtls_controller(tmp_path, pki):
    ctl = ControllerThread(tmp_path / "fleet.db",
                           tls=ServerTLS(pki.cert("server"), pki.key("server"), client_ca=pki.cert("ca")))
    yield ctl
    ctl.stop()


def test_tls_serves_clients_that_trust_its_ca_and_only_over_tls(tls_controller, pki):
    address, token = tls_controller.address, tls_controller.operator_token
    assert list_devices(address, token, pki.client()) == grpc.StatusCode.OK
    assert list_devices(address, token, None) == grpc.StatusCode.UNAVAILABLE  # plaintext to a TLS port
    assert list_devices(address, token, pki.client(ca="other-ca")) == grpc.StatusCode.UNAVAILABLE
    # Tokens still decide the role over TLS.
    assert list_devices(address, "efo_garbage", pki.client()) == grpc.StatusCode.UNAUTHENTICATED


def test_devices_enroll_and_publish_over_tls(tls_controller, pki):
    with open_channel(tls_controller.address, tls=pki.client()) as channel:
        stub = agent_pb2_grpc.AgentGatewayStub(channel)
        device = stub.Enroll(agent_pb2.EnrollRequest(enroll_key="efk_test", hardware_id="hw-1"), timeout=5)
        (ack,) = stub.PublishDetections(iter([batch(1, 2)]), metadata=auth(device.device_token), timeout=5)
    assert ack.acked_sequence == 2


def test_mutual_tls_needs_a_client_certificate_from_the_client_ca(mtls_controller, pki):
    address, token = mtls_controller.address, mtls_controller.operator_token
    assert list_devices(address, token, pki.client(cert="client")) == grpc.StatusCode.OK
    assert list_devices(address, token, pki.client()) == grpc.StatusCode.UNAVAILABLE  # no client certificate
    assert list_devices(address, token, pki.client(cert="rogue-client")) == grpc.StatusCode.UNAVAILABLE
    assert list_devices(address, token, pki.client(ca="other-ca", cert="client")) == grpc.StatusCode.UNAVAILABLE


@pytest.mark.slow  # the controller and each command are processes
def test_serve_and_devices_cli_with_mutual_tls(tmp_path, pki):
    db = tmp_path / "fleet.db"
    token = run_cli("edgefleet.fleet.cli", "operator-token", "create", "--db", str(db),
                    "--create").stdout.strip()
    server = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.fleet.cli", "serve", "--listen", "127.0.0.1:0", "--db", str(db),
         "--tls-cert", str(pki.cert("server")), "--tls-key", str(pki.key("server")),
         "--tls-client-ca", str(pki.cert("ca"))],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = server.stdout.readline()
        assert "listening on" in line, server.stderr.read() if server.poll() is not None else line
        address = line.split("listening on", 1)[1].split()[0]
        devices = ("edgefleet.fleet.cli", "devices", "--controller", address, "--token", token, "--timeout", "5",
                   "--tls-ca", str(pki.cert("ca")))
        proc = run_cli(*devices, "--tls-cert", str(pki.cert("client")), "--tls-key", str(pki.key("client")))
        assert proc.returncode == 0, proc.stderr
        assert "DEVICE" in proc.stdout
        proc = run_cli(*devices)
        assert proc.returncode == 2 and "cannot reach the controller" in proc.stderr
        proc = run_cli(*devices, "--tls-cert", str(pki.cert("client")))
        assert proc.returncode == 2 and "--tls-cert and --tls-key go together" in proc.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=10)
    assert server.returncode == 0


@pytest.mark.slow  # a process
def test_serve_names_a_missing_certificate_file(tmp_path, pki):
    proc = run_cli("edgefleet.fleet.cli", "serve", "--listen", "127.0.0.1:0", "--db", str(tmp_path / "fleet.db"),
                   "--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(pki.key("server")), timeout=30)
    assert proc.returncode == 2
    assert "--tls-cert" in proc.stderr and "missing.pem" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_an_agent_streams_over_mutual_tls_and_is_refused_without_its_certificate(mtls_controller, pki, vtest,
                                                                                 tmp_path):
    def agent(state: str, *tls: str) -> subprocess.CompletedProcess:
        return run_cli("edgefleet.agent.cli", "run", "--controller", mtls_controller.address, "--source", str(vtest),
                       "--state-dir", str(tmp_path / state), "--enroll-key", "efk_test", "--max-frames", "10",
                       "--drain-timeout", "3", "--threads", "1", *tls)

    ok = agent("with-cert", "--tls-ca", str(pki.cert("ca")), "--tls-cert", str(pki.cert("client")),
               "--tls-key", str(pki.key("client")))
    assert ok.returncode == 0, ok.stderr[-2000:]
    with open_channel(mtls_controller.address, token=mtls_controller.operator_token, tls=pki.client("ca", "client")) \
            as channel:
        devices = fleet_pb2_grpc.FleetControlStub(channel).ListDevices(fleet_pb2.ListDevicesRequest(), timeout=5)
    assert [d.health.frames_total for d in devices.devices] == [10]

    refused = agent("no-cert", "--tls-ca", str(pki.cert("ca")))  # the handshake fails: unreachable, nothing lost
    assert refused.returncode == 4 and "stay in" in refused.stderr, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr

    half = agent("half", "--tls-ca", str(pki.cert("ca")), "--tls-cert", str(pki.cert("client")))
    assert half.returncode == 2 and "--tls-cert and --tls-key go together" in half.stderr
