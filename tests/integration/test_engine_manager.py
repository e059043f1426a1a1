"""Artifacts over a real FetchArtifact stream (a test servicer on 127.0.0.1:0, plumbing only): an
interrupted stream resumes from its offset through Link.fetch_artifact, and a deployment fetched
that way reaches ACTIVE."""
from __future__ import annotations

import hashlib
import time
from concurrent import futures

import grpc
import numpy as np
import onnx
import pytest

from edgefleet.adaptive.plan import DevicePlan
from edgefleet.adaptive.probe import HardwareProfile
from edgefleet.agent.artifacts import ArtifactInfo, Downloader
from edgefleet.agent.convert import artifact_from_pb
from edgefleet.agent.engines import DeploymentStatus, DeployRequest, EngineManager
from edgefleet.agent.errors import DownloadError
from edgefleet.agent.health import HealthSample
from edgefleet.agent.link import Identity, Link
from edgefleet.agent.messages import Hello
from edgefleet.agent.shadow import GateParams
from edgefleet.models import load_detector
from edgefleet.v1 import agent_pb2, agent_pb2_grpc, types_pb2

from ..unit.test_engines import CPU, Signer, tiny_onnx


class Artifacts(agent_pb2_grpc.AgentGatewayServicer):
    """FetchArtifact from a dict of blobs; the first `breaks` streams abort after `abort_after` bytes.
    Session records what the agent sends and accepts it."""

    def Session(self, request_iterator, context):
        yield agent_pb2.ControllerMessage(accepted=agent_pb2.SessionAccepted(device_id="dev-1", heartbeat_interval_s=1))
        for message in request_iterator:
            self.session.append(message)

    def PublishDetections(self, request_iterator, context):
        for _ in request_iterator:
            pass
        return iter(())

    def __init__(self, chunk: int = 4096, abort_after: int = 0, breaks: int = 0):
        self.blobs: dict[str, bytes] = {}
        self.chunk, self.abort_after, self.breaks = chunk, abort_after, breaks
        self.requests: list[tuple[int, str]] = []
        self.session: list[agent_pb2.AgentMessage] = []

    def add(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        return sha

    def FetchArtifact(self, request, context):
        auth = dict(context.invocation_metadata()).get("authorization", "")
        self.requests.append((request.offset, auth))
        if auth != "Bearer tok":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad token")
        data = self.blobs.get(request.sha256)
        if data is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no artifact {request.sha256}")
        sent = 0
        for at in range(request.offset, len(data), self.chunk):
            if self.breaks and sent >= self.abort_after:
                self.breaks -= 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "connection dropped")
            part = data[at:at + self.chunk]
            sent += len(part)
            yield agent_pb2.ArtifactChunk(offset=at, data=part, total_size=len(data))


@pytest.fixture
def gateway():
    servicer = Artifacts()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    agent_pb2_grpc.add_AgentGatewayServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=0.5)


def hello() -> Hello:
    return Hello(HardwareProfile(), DevicePlan(), [], time.time())


def link_to(address: str, tmp_path, token: str = "tok") -> Link:
    link = Link(controller=address, state_dir=tmp_path, outbox_path=tmp_path / "outbox.db", enroll_key=None,
                name="test", hello=hello, health=HealthSample)
    link.identity = Identity("dev-1", token, address, b"")
    return link


def test_an_aborted_stream_resumes_from_its_offset(gateway, tmp_path):
    servicer, address = gateway
    data = np.random.default_rng(7).bytes(100_000)
    sha = servicer.add(data)
    servicer.abort_after, servicer.breaks = 30_000, 1
    downloader = Downloader(tmp_path / "engines", link_to(address, tmp_path).fetch_artifact, backoff_s=0.01)
    path = downloader.download(ArtifactInfo(sha, len(data), "big.onnx", "onnx"))
    offsets = [offset for offset, _ in servicer.requests]
    assert len(offsets) == 2 and offsets[0] == 0 and offsets[1] >= 30_000
    assert all(auth == "Bearer tok" for _, auth in servicer.requests)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha


def test_a_refused_fetch_fails_without_retrying(gateway, tmp_path):
    servicer, address = gateway
    downloader = Downloader(tmp_path / "engines", link_to(address, tmp_path, token="wrong").fetch_artifact,
                            backoff_s=0.01)
    with pytest.raises(DownloadError, match="refused at byte 0: FetchArtifact UNAUTHENTICATED: bad token"):
        downloader.download(ArtifactInfo("a" * 64, 10, "x.onnx", "onnx"))
    assert len(servicer.requests) == 1


def test_a_deployment_fetched_over_grpc_goes_active(gateway, tmp_path):
    servicer, address = gateway
    v1 = tiny_onnx(tmp_path / "v1.onnx")
    model = onnx.load(str(v1))
    model.producer_version = "v2"
    v2 = tmp_path / "v2.onnx"
    onnx.save(model, v2)
    servicer.add(v2.read_bytes())
    servicer.chunk, servicer.abort_after, servicer.breaks = 512, 1024, 2
    signer, reports = Signer(), []
    manager = EngineManager(tmp_path / "agent", fetch=link_to(address, tmp_path).fetch_artifact,
                            load=lambda p: load_detector(p), report=reports.append,
                            public_key=lambda: signer.public, caps=CPU, sample_every=1, gate_min_samples=5,
                            download_backoff_s=0.01)
    artifact = artifact_from_pb(signer.artifact(v2.read_bytes(), name="v2.onnx"))
    manager.deploy(DeployRequest("c1", "r1", artifact, GateParams(0.2, 0.8)))
    current = load_detector(v1)
    frame = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    deadline = time.monotonic() + 20
    swap = None
    while swap is None and time.monotonic() < deadline and not any(r.state == "FAILED" for r in reports):
        manager.observe([frame], current.detect_batch([frame]), current.last_inference_ms)
        swap = manager.take_swap()
        time.sleep(0.002)
    assert swap is not None, [(r.state, r.reason) for r in reports]
    manager.swapped(swap)
    assert reports[-1].state == "ACTIVE" and reports[-1].rollout_id == "r1"
    assert servicer.requests[0][0] == 0 and len(servicer.requests) == 3
    manager.close(clean=True)


def test_identity_keeps_the_controller_key_and_older_identities_load_without_it(tmp_path):
    link = link_to("127.0.0.1:1", tmp_path)
    link._save_identity(Identity("dev-1", "tok", "127.0.0.1:1", b"\x01" * 32))
    assert link._load_identity().controller_public_key == b"\x01" * 32
    (tmp_path / "identity.json").write_text('{"device_id": "d", "token": "t", "controller": "127.0.0.1:1"}')
    assert link._load_identity().controller_public_key == b""


def test_the_session_resends_the_latest_deployment_and_carries_queued_messages(gateway, tmp_path):
    servicer, address = gateway
    latest = DeploymentStatus("r1", "a" * 64, "FAILED", reason="too slow", gate_metrics={"fps_ratio": 0.4})
    link = Link(controller=address, state_dir=tmp_path, outbox_path=tmp_path / "outbox.db", enroll_key=None,
                name="test", hello=hello, health=HealthSample, deployment=lambda: latest)
    link._save_identity(Identity("dev-1", "tok", address, b""))
    link.start()
    try:
        deadline = time.monotonic() + 10
        while not link.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        link.send_deployment(DeploymentStatus("r2", "b" * 64, "DOWNLOADING", progress=0.5))
        link.send_result("cmd-9", True)
        while len(servicer.session) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        link.stop()
    kinds = [m.WhichOneof("body") for m in servicer.session]
    assert kinds[:2] == ["hello", "deployment"], kinds
    resent = servicer.session[1].deployment
    assert (resent.rollout_id, resent.state, resent.reason) == ("r1", types_pb2.DeploymentStatus.FAILED, "too slow")
    assert resent.gate_metrics["fps_ratio"] == pytest.approx(0.4)
    sent = [m for m in servicer.session[2:] if m.WhichOneof("body") != "heartbeat"]
    assert [m.WhichOneof("body") for m in sent] == ["deployment", "result"]
    assert sent[0].deployment.state == types_pb2.DeploymentStatus.DOWNLOADING and sent[1].result.command_id == "cmd-9"
