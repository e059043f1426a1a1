"""agent.engines on real files and real ONNX models: download, signatures, sidecars, the shadow gate,
active.json and the manager's deploy / rollback on its worker thread."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import re
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edgefleet.agent.artifacts import (
    ArtifactInfo,
    Downloader,
    check_device,
    install_sidecar,
    needs_build,
    verify_artifact_signature,
)
from edgefleet.agent.convert import artifact_from_pb
from edgefleet.agent.engines import ActiveEngines, DeploymentStatus, DeployRequest, EngineManager, EngineRef
from edgefleet.agent.errors import DownloadError, EngineError, FetchError, SignatureError
from edgefleet.agent.shadow import GateParams, ShadowGate, match_count
from edgefleet.models import load_detector
from edgefleet.models.darknet import convert
from edgefleet.models.detections import Detections
from edgefleet.models.manifest import DeviceCaps, manifest_path, read_manifest
from edgefleet.v1 import agent_pb2, types_pb2

from ..onnx_variants import slow_onnx, warmup_failing_onnx
from .test_models_darknet import TINY_CFG, tiny_weights

CPU = DeviceCaps(onnxruntime_providers=("CPUExecutionProvider",))
JETSON = DeviceCaps("10.3.0", "8.7", ("CPUExecutionProvider",))


# ---- builders ----

def tiny_onnx(path: Path, seed: int = 0, names=("cat", "dog")) -> Path:
    """A real (tiny, 32x32, random-weight) Darknet detector: loads and runs in a millisecond."""
    onnx.save(convert(TINY_CFG, tiny_weights(seed)[0], list(names)), path)
    return path


class Signer:
    def __init__(self):
        self.key = Ed25519PrivateKey.generate()
        self.public = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def artifact(self, data: bytes, name: str = "tiny.onnx", fmt: str = "onnx", **fields) -> types_pb2.Artifact:
        manifest = types_pb2.ArtifactManifest(sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data),
                                              name=name, format=fmt, precision="fp32", **fields)
        return types_pb2.Artifact(manifest=manifest,
                                  signature=self.key.sign(manifest.SerializeToString(deterministic=True)))


class Store:
    """What the controller's FetchArtifact serves: bytes by sha256, in chunks, from an offset."""

    def __init__(self, chunk: int = 1000):
        self.blobs: dict[str, bytes] = {}
        self.chunk = chunk
        self.offsets: list[int] = []

    def add(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        return sha

    def fetch(self, sha: str, offset: int):
        self.offsets.append(offset)
        if sha not in self.blobs:
            raise FetchError(f"no artifact {sha}", retryable=False)
        data = self.blobs[sha]
        for at in range(offset, len(data), self.chunk):
            yield agent_pb2.ArtifactChunk(offset=at, data=data[at:at + self.chunk], total_size=len(data))


def info_for(data: bytes, name: str = "model.onnx", fmt: str = "onnx") -> ArtifactInfo:
    return ArtifactInfo(hashlib.sha256(data).hexdigest(), len(data), name, fmt)


def interrupted(store: Store, after: int, times: int = 1):
    """A fetch whose first `times` streams break after `after` bytes (as a dropped connection does)."""
    broken = {"left": times}

    def fetch(sha, offset):
        sent = 0
        for chunk in store.fetch(sha, offset):
            if broken["left"] and sent + len(chunk.data) > after:
                broken["left"] -= 1
                raise ConnectionResetError("stream reset by peer")
            sent += len(chunk.data)
            yield chunk
    return fetch


# ---- Downloader ----

def test_download_lands_verified_under_its_sha_with_progress(tmp_path):
    data = np.random.default_rng(0).bytes(10_500)
    store, seen = Store(), []
    store.add(data)
    path = Downloader(tmp_path, store.fetch).download(info_for(data, "yolo v8/n"), lambda d, t: seen.append((d, t)))
    assert path == tmp_path / hashlib.sha256(data).hexdigest() / "n.onnx"
    assert path.read_bytes() == data
    assert seen[-1] == (len(data), len(data)) and len(seen) == 11
    assert not list((tmp_path / "staging").iterdir()), "the .part moved into place"


def test_an_interrupted_stream_resumes_from_its_offset(tmp_path):
    data = np.random.default_rng(1).bytes(25_000)
    store = Store()
    store.add(data)
    downloader = Downloader(tmp_path, interrupted(store, after=7_000), backoff_s=0.01)
    path = downloader.download(info_for(data))
    assert downloader.requests == [0, 7_000]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_download_resumes_what_a_killed_process_left(tmp_path):
    data = np.random.default_rng(2).bytes(9_000)
    store = Store()
    sha = store.add(data)
    (tmp_path / "staging").mkdir()
    (tmp_path / "staging" / f"{sha}.part").write_bytes(data[:4_000])
    downloader = Downloader(tmp_path, store.fetch)
    assert downloader.download(info_for(data)).read_bytes() == data
    assert downloader.requests == [4_000]


def test_corrupt_bytes_fail_and_delete_the_part_so_a_retry_starts_fresh(tmp_path):
    data = np.random.default_rng(3).bytes(5_000)
    store = Store()
    sha = store.add(data)
    store.blobs[sha] = data[:2_000] + b"X" + data[2_001:]  # one flipped byte on the way
    with pytest.raises(DownloadError, match="sha256 .* not the signed .* deleted the partial file"):
        Downloader(tmp_path, store.fetch).download(info_for(data))
    assert not (tmp_path / "staging" / f"{sha}.part").exists()
    store.blobs[sha] = data
    retry = Downloader(tmp_path, store.fetch)
    assert retry.download(info_for(data)).read_bytes() == data and retry.requests == [0]


def test_a_stream_that_keeps_ending_early_fails_after_its_attempts(tmp_path):
    data = np.random.default_rng(4).bytes(5_000)
    store = Store()
    store.add(data)

    def truncated(sha, offset):  # ends cleanly at byte 3000, every time
        return (c for c in store.fetch(sha, offset) if c.offset < 3_000)

    with pytest.raises(DownloadError, match="failed 3 times in a row at byte 3000 of 5000: stream ended"):
        Downloader(tmp_path, truncated, attempts=3, backoff_s=0.001).download(info_for(data))


def test_a_stream_the_controller_ends_early_continues_at_once(tmp_path):
    """The controller ends a stream when its turn is over (fetch_stream_s): no error, no backoff."""
    data = np.random.default_rng(6).bytes(5_000)
    store = Store()
    store.add(data)

    class NoWaiting(threading.Event):
        def wait(self, timeout=None):
            raise AssertionError(f"backed off {timeout} s after a stream that made progress")

    def turns(sha, offset):  # 2 chunks of 1000 bytes a turn
        return itertools.islice(store.fetch(sha, offset), 2)

    downloader = Downloader(tmp_path, turns, attempts=1, backoff_s=30, stop=NoWaiting())
    assert downloader.download(info_for(data)).read_bytes() == data
    assert downloader.requests == [0, 2_000, 4_000]


def test_an_artifact_of_another_size_fails_and_leaves_no_part(tmp_path):
    data = np.random.default_rng(5).bytes(5_000)
    store = Store()
    sha = store.add(data)
    store.blobs[sha] = data + b"more"
    with pytest.raises(DownloadError, match="serves 5004 bytes .* its signed manifest says 5000"):
        Downloader(tmp_path, store.fetch).download(info_for(data))
    assert not (tmp_path / "staging" / f"{sha}.part").exists()


def test_a_refused_fetch_is_not_retried(tmp_path):
    store = Store()
    downloader = Downloader(tmp_path, store.fetch, backoff_s=0.001)
    with pytest.raises(DownloadError, match="refused at byte 0: no artifact"):
        downloader.download(info_for(b"never stored"))
    assert downloader.requests == [0]


@pytest.mark.parametrize(("field", "value", "error"), [
    ("sha256", "../../etc/passwd", "sha256='../../etc/passwd': must be 64 lowercase hex"),
    ("size_bytes", 0, "size_bytes=0: must be > 0"),
    ("format", "tflite", "format='tflite': this agent runs onnx"),
])
def test_bad_manifest_fields_are_refused_by_name(tmp_path, field, value, error):
    info = info_for(b"abc")
    info = ArtifactInfo(**{**info.__dict__, field: value})
    with pytest.raises(EngineError, match=error):
        Downloader(tmp_path, Store().fetch).download(info)


# ---- signatures ----

def test_signatures_verify_and_tampering_is_refused():
    signer, other = Signer(), Signer()
    artifact = signer.artifact(b"model bytes")
    verify_artifact_signature(signer.public, artifact)                 # the protobuf itself
    verify_artifact_signature(signer.public, artifact_from_pb(artifact))  # the plain data the manager gets
    tampered = types_pb2.Artifact()
    tampered.CopyFrom(artifact)
    tampered.manifest.size_bytes += 1
    for key, bad in ((signer.public, tampered), (other.public, artifact)):
        with pytest.raises(SignatureError, match="does not verify with the controller's key"):
            verify_artifact_signature(key, artifact_from_pb(bad))
    with pytest.raises(SignatureError, match="re-enroll to learn the controller's key"):
        verify_artifact_signature(b"", artifact)


# ---- sidecar and device fit ----

def test_an_onnx_gets_its_models_manifest_and_loads(tmp_path):
    path = tiny_onnx(tmp_path / "tiny.onnx")
    data = path.read_bytes()
    install_sidecar(path, info_for(data))
    assert read_manifest(path).file_sha256 == hashlib.sha256(data).hexdigest()
    assert load_detector(path).names == ["cat", "dog"]


@pytest.mark.parametrize(("make", "fields", "error"), [
    (lambda p: tiny_onnx(p), {"class_names": ("person",)}, "lists 1 classes \\(person, ...\\); the model has 2"),
    (lambda p: p.write_bytes(b"\x00garbage" * 50) and p, {},
     "is not a model this agent can run: .*not a readable ONNX"),
])
def test_sidecar_refuses_what_does_not_match(tmp_path, make, fields, error):
    path = make(tmp_path / "m.onnx")
    info = ArtifactInfo(**{**info_for(path.read_bytes()).__dict__, **fields})
    with pytest.raises(EngineError, match=error):
        install_sidecar(path, info)
    assert not manifest_path(path).exists()


@pytest.mark.parametrize(("info", "caps", "error"), [
    (ArtifactInfo("a" * 64, 1, "y.engine", "tensorrt-engine", tensorrt_version="10.3.0",
                  gpu_compute_capability="8.7"), CPU, "this device has no TensorRT"),
    (ArtifactInfo("a" * 64, 1, "y.engine", "tensorrt-engine", tensorrt_version="8.6.1",
                  gpu_compute_capability="8.7"), JETSON, "built with TensorRT 8.6.1"),
    (ArtifactInfo("a" * 64, 1, "y.engine", "tensorrt-engine"), JETSON, "does not say which TensorRT version"),
    (ArtifactInfo("a" * 64, 1, "y.onnx", "onnx"), DeviceCaps(), "needs onnxruntime"),
])
def test_device_fit_is_checked_with_the_reason(info, caps, error):
    with pytest.raises(EngineError, match=error):
        check_device(info, caps)


def test_onnx_builds_an_engine_only_where_tensorrt_is():
    onnx_info = ArtifactInfo("a" * 64, 1, "y.onnx", "onnx")
    assert needs_build(onnx_info, JETSON) and not needs_build(onnx_info, CPU)
    check_device(onnx_info, CPU)  # onnxruntime runs it directly


# ---- shadow gate ----

def dets(*rows) -> Detections:
    """(x1, y1, x2, y2, score, class) rows."""
    a = np.array(rows, dtype=np.float32).reshape(-1, 6)
    return Detections(a[:, :4], a[:, 4], a[:, 5].astype(np.int32))


@pytest.mark.parametrize(("current", "candidate", "matches"), [
    (dets((0, 0, 10, 10, .9, 0)), dets((1, 1, 10, 10, .9, 0)), 1),        # IoU 0.81
    (dets((0, 0, 10, 10, .9, 0)), dets((5, 0, 15, 10, .9, 0)), 0),        # IoU 0.33
    (dets((0, 0, 10, 10, .9, 0)), dets((0, 0, 10, 10, .9, 1)), 0),        # other class
    (dets((0, 0, 10, 10, .9, 0)), dets((0, 0, 10, 10, .9, 0), (0, 0, 10, 11, .8, 0)), 1),  # one-to-one
    (dets(), dets(), 0),
    (dets((5, 0, 5, 10, .9, 0)), dets((5, 0, 5, 10, .9, 0)), 1),          # zero area, identical
])
def test_matches_are_same_class_one_to_one_at_iou_half(current, candidate, matches):
    assert match_count(current, candidate) == matches


class Replay:
    """A candidate that answers with fixed detections after a fixed inference time."""

    def __init__(self, answer: Detections, ms: float):
        self.answer, self.last_inference_ms = answer, ms

    def detect(self, frame):
        return self.answer


FRAME = np.zeros((48, 64, 3), np.uint8)
BOX = dets((0, 0, 10, 10, .9, 0), (20, 20, 30, 30, .9, 1), (40, 0, 50, 10, .1, 0))  # the last below 0.25


@pytest.mark.parametrize(("candidate", "params", "budget", "passed", "reason"), [
    (Replay(BOX, 10), GateParams(0.9, 0.8), 0, True,
     "passed: 10 frames, p95 10.0 ms, 1.00x throughput, agreement 1.00"),
    (Replay(BOX, 25), GateParams(0.9, 0.8), 0, False, "throughput 0.40x the current engine's \\(gate 0.90x"),
    (Replay(BOX, 25), GateParams(0.3, 0.8), 20, False, "p95 25.0 ms exceeds the plan's latency budget 20.0 ms"),
    (Replay(dets((0, 0, 10, 10, .9, 0)), 10), GateParams(0.9, 0.8), 0, False, "detection agreement 0.67"),
    (Replay(dets((0, 0, 10, 10, .9, 0)), 10), GateParams(0.9, 0.8, expect_different_detections=True), 0, True,
     "passed"),
])
def test_gate_verdicts(candidate, params, budget, passed, reason):
    gate = ShadowGate(candidate, params, latency_budget_ms=budget, min_samples=10)
    for _ in range(10):
        gate.evaluate(FRAME, BOX, 10.0)
    verdict = gate.verdict()
    assert verdict.passed is passed
    assert re.match(reason, verdict.reason), verdict.reason
    assert verdict.metrics["samples"] == 10 and verdict.metrics["current_boxes"] == 20


def test_gate_window_needs_time_and_samples_and_times_out():
    now = {"t": 0.0}
    gate = ShadowGate(Replay(BOX, 1), GateParams(window_s=30), min_samples=3, max_samples=50,
                      timeout_s=100, clock=lambda: now["t"])
    for _ in range(5):
        gate.evaluate(FRAME, BOX, 1.0)
    assert not gate.done(), "enough samples, not enough time"
    now["t"] = 31
    assert gate.done()
    lonely = ShadowGate(Replay(BOX, 1), GateParams(window_s=1), min_samples=3, timeout_s=0.3)
    verdict = lonely.run(threading.Event())
    assert not verdict.passed and "got 0 sampled frame(s)" in verdict.reason


def test_offer_keeps_only_the_newest_sample():
    gate = ShadowGate(Replay(BOX, 1), GateParams(), min_samples=1)
    gate.offer(FRAME, dets(), 1.0)
    gate.offer(FRAME, BOX, 2.0)  # replaces the first: never blocks the loop
    gate.run(threading.Event())
    assert gate.current_ms == [2.0]


@pytest.mark.slow
def test_a_slow_real_model_fails_the_fps_gate_and_the_same_model_passes(tmp_path):
    tiny = tiny_onnx(tmp_path / "tiny.onnx")
    # one thread each: at a fraction of a millisecond per call, waking a thread pool is most of the time
    current = load_detector(tiny, intra_op_threads=1)
    frames = [np.random.default_rng(i).integers(0, 255, (96, 128, 3), dtype=np.uint8) for i in range(10)]
    verdicts = {}
    for name, path in (("same", tiny), ("slow", slow_onnx(tiny, tmp_path / "slow.onnx"))):
        gate = ShadowGate(load_detector(path, intra_op_threads=1), GateParams(0.5, 0.9), min_samples=10)
        for frame in frames:
            found = current.detect(frame)
            gate.evaluate(frame, found, current.last_inference_ms)
        verdicts[name] = gate.verdict()
    assert verdicts["same"].passed, verdicts["same"].reason
    assert verdicts["same"].metrics["agreement"] == 1.0
    assert not verdicts["slow"].passed and "throughput" in verdicts["slow"].reason
    assert verdicts["slow"].metrics["agreement"] == 1.0 and verdicts["slow"].metrics["fps_ratio"] < 0.5


# ---- active.json ----

def test_crash_loop_rolls_back_on_the_third_unconfirmed_start(tmp_path):
    state = tmp_path / "active.json"
    old = tiny_onnx(tmp_path / "old.onnx")
    active = ActiveEngines(state, confirm_after_s=60)
    active.current = EngineRef("a" * 64, str(old), "r1", "old")
    active.save()
    active.swapped(EngineRef("b" * 64, str(tmp_path / "new.onnx"), "r2", "new"))
    assert ActiveEngines(state).on_start() is None
    assert ActiveEngines(state).on_start() is None
    third = ActiveEngines(state, confirm_after_s=60)
    status = third.on_start()
    assert status == DeploymentStatus("r2", "b" * 64, "ROLLED_BACK", 1.0,
                                      "crash loop after swap: 3 starts without 60 s of healthy running")
    saved = json.loads(state.read_text())
    assert saved["current"]["sha256"] == "a" * 64 and saved["previous"] is None and saved["confirmed"]


def test_confirmation_stops_the_count_and_a_missing_previous_means_the_model_flag(tmp_path):
    state = tmp_path / "active.json"
    active = ActiveEngines(state)
    active.swapped(EngineRef("b" * 64, "new.onnx", "r2", "new"))  # from the --model engine
    assert active.previous == EngineRef("", "", "", "")
    ActiveEngines(state).on_start()
    confirmed = ActiveEngines(state)
    confirmed.confirm()
    for _ in range(5):
        assert ActiveEngines(state).on_start() is None
    loop = ActiveEngines(state)
    loop.confirmed = False
    loop.save()
    for _ in range(3):
        status = ActiveEngines(state).on_start()
    assert status.state == "ROLLED_BACK" and ActiveEngines(state).current is None


# ---- the manager ----

class Harness:
    """An EngineManager with real files, real ONNX models and an in-memory FetchArtifact; `loop()`
    plays the detect loop: it feeds the shadow test and swaps between its 'ticks'."""

    def __init__(self, tmp_path: Path, current_model: Path, signer: Signer | None = None, **options):
        self.signer = signer or Signer()
        self.store = Store(chunk=4096)
        self.reports: list[DeploymentStatus] = []
        self.results: list[tuple[str, bool, str]] = []
        self.detector = load_detector(current_model)
        self.lock = threading.Lock()
        self.state_dir = tmp_path / "agent"
        self.manager = EngineManager(
            self.state_dir, fetch=self.store.fetch, load=lambda p: load_detector(p), report=self.reports.append,
            result=lambda *r: self.results.append(r), public_key=lambda: self.signer.public,
            fallback_model=current_model, caps=CPU, sample_every=1, gate_min_samples=5, progress_every_s=0,
            current_turn=self.turn, **options)
        self.frames = [np.random.default_rng(i).integers(0, 255, (64, 96, 3), dtype=np.uint8) for i in range(8)]

    @contextlib.contextmanager
    def turn(self):
        """The shadow test's turn: the 'loop' does not detect meanwhile (agent.engines.slot_turn)."""
        with self.lock:
            yield self.detector

    def request(self, model: Path, rollout: str = "r1", gate: GateParams | None = None, **fields):
        data = model.read_bytes()
        self.store.add(data)
        artifact = self.signer.artifact(data, name=model.name, **fields)
        return DeployRequest(f"cmd-{rollout}", rollout, artifact_from_pb(artifact), gate or GateParams(0.2, 0.8))

    def loop(self, until, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        i = 0
        while time.monotonic() < deadline:
            frame = self.frames[i % len(self.frames)]
            i += 1
            with self.lock:
                found = self.detector.detect_batch([frame])
            self.manager.observe([frame], found, self.detector.last_inference_ms)
            swap = self.manager.take_swap()
            if swap is not None:
                old, self.detector = self.detector, swap.detector
                old.close()
                self.manager.swapped(swap)
            if until():
                return
            time.sleep(0.002)
        raise AssertionError(f"timed out; reports: {[(r.state, r.reason) for r in self.reports]}")

    def final(self, rollout: str = "r1"):
        return next((r for r in reversed(self.reports) if r.rollout_id == rollout and r.final), None)


def test_deploy_downloads_tests_and_swaps_between_ticks(tmp_path):
    v1 = tiny_onnx(tmp_path / "v1.onnx")
    v2 = tmp_path / "v2.onnx"
    model = onnx.load(str(v1))
    model.producer_version = "v2"  # the same network, another file (another sha256)
    onnx.save(model, v2)
    h = Harness(tmp_path, v1)
    h.manager.deploy(h.request(v2))
    h.loop(lambda: h.final())
    states = [r.state for r in h.reports]
    assert states[:2] == ["VERIFYING", "DOWNLOADING"] and states[-1] == "ACTIVE"
    assert {"WARMING_UP", "SHADOW_TESTING"} <= set(states)
    active = h.final()
    assert active.gate_metrics["agreement"] == 1.0 and active.gate_metrics["samples"] >= 5
    assert Path(h.detector.model_path).parent.name == hashlib.sha256(v2.read_bytes()).hexdigest()
    saved = json.loads((h.state_dir / "engines" / "active.json").read_text())
    assert saved["current"]["rollout_id"] == "r1" and saved["previous"]["sha256"] == "" and not saved["confirmed"]
    # replays (the controller resends on reconnect) answer without redoing anything
    count = len(h.reports)
    h.manager.deploy(h.request(v2))
    assert len(h.reports) == count + 1 and h.reports[-1].state == "ACTIVE" and not h.manager.busy
    h.manager.close(clean=True)
    assert json.loads((h.state_dir / "engines" / "active.json").read_text())["confirmed"]


def test_a_slow_candidate_fails_and_the_current_engine_stays(tmp_path):
    v1 = tiny_onnx(tmp_path / "v1.onnx")
    h = Harness(tmp_path, v1)
    first = h.detector
    # 16 matmuls of 384: tens of times the tiny model's work, so a loaded machine's noise cannot lift it past 0.5
    h.manager.deploy(h.request(slow_onnx(v1, tmp_path / "slow.onnx", matmuls=16), gate=GateParams(0.5, 0.8)))
    h.loop(lambda: h.final())
    failed = h.final()
    assert failed.state == "FAILED" and failed.reason.startswith("shadow test failed: throughput")
    assert failed.gate_metrics["fps_ratio"] < 0.5 and h.detector is first
    # the same rollout again: FAILED again with the same reason, nothing re-run
    h.manager.deploy(h.request(tmp_path / "slow.onnx", gate=GateParams(0.5, 0.8)))
    assert h.reports[-1] == failed and not h.manager.busy
    h.manager.close()


@pytest.mark.parametrize(("make", "reason"), [
    (lambda src, dst: dst.write_bytes(b"\x08garbage that is no onnx" * 40) and dst, "not a readable ONNX file"),
    (warmup_failing_onnx, "loading .* failed: .*(Reshape|reshape)"),
])
def test_load_and_warm_up_failures_are_reported(tmp_path, make, reason):
    v1 = tiny_onnx(tmp_path / "v1.onnx")
    h = Harness(tmp_path, v1)
    h.manager.deploy(h.request(make(v1, tmp_path / "bad.onnx")))
    h.loop(lambda: h.final())
    assert h.final().state == "FAILED"
    assert re.search(reason, h.final().reason), h.final().reason
    h.manager.close()


def test_unsigned_or_keyless_deploys_are_refused_before_downloading(tmp_path):
    v1 = tiny_onnx(tmp_path / "v1.onnx")
    h = Harness(tmp_path, v1)
    forged = h.request(v1, rollout="forged")
    h.manager.public_key = lambda: Signer().public
    h.manager.deploy(forged)
    h.loop(lambda: h.final("forged"))
    assert "does not verify" in h.final("forged").reason and h.store.offsets == []
    h.manager.public_key = lambda: b""
    h.manager.deploy(h.request(v1, rollout="old-identity"))
    h.loop(lambda: h.final("old-identity"))
    assert "re-enroll to learn the controller's key" in h.final("old-identity").reason
    h.manager.close()


def test_one_deployment_at_a_time_then_rollback(tmp_path):
    v1 = tiny_onnx(tmp_path / "v1.onnx")
    v2 = tmp_path / "v2.onnx"
    model = onnx.load(str(v1))
    model.producer_version = "v2"
    onnx.save(model, v2)
    h = Harness(tmp_path, v1)
    h.manager.deploy(h.request(v2, rollout="r1"))
    h.manager.deploy(h.request(v2, rollout="r1"))  # duplicate: ignored
    h.manager.deploy(h.request(v1, rollout="r2"))  # another rollout: refused at once
    assert h.final("r2").reason.startswith("another deployment in progress (rollout r1")
    h.loop(lambda: h.final("r1"))
    assert h.final("r1").state == "ACTIVE"
    h.manager.rollback("cmd-back", "operator said so")
    h.loop(lambda: h.results)
    assert h.results == [("cmd-back", True, "")]
    assert h.reports[-1] == DeploymentStatus("r1", hashlib.sha256(v2.read_bytes()).hexdigest(), "ROLLED_BACK",
                                             1.0, "rollback command: operator said so")
    assert Path(h.detector.model_path) == v1
    assert h.manager.active.current is None and h.manager.active.previous is None
    h.manager.rollback("cmd-again", "")
    assert h.results[-1] == ("cmd-again", False, "no previous engine to roll back to")
    h.manager.close()


def same_network(v1: Path, dst: Path) -> Path:
    model = onnx.load(str(v1))
    model.producer_version = dst.stem  # the same network, another file (another sha256)
    onnx.save(model, dst)
    return dst


def test_a_cancel_stops_the_shadow_test_and_refuses_the_rollout_from_then_on(tmp_path):
    v1 = tiny_onnx(tmp_path / "v1.onnx")
    h = Harness(tmp_path, v1)
    first = h.detector
    request = h.request(same_network(v1, tmp_path / "v2.onnx"), gate=GateParams(0.2, 0.8, window_s=60))
    h.manager.deploy(request)
    h.loop(lambda: any(r.state == "SHADOW_TESTING" for r in h.reports))
    h.manager.cancel("r1", "rollout r1 aborted by an operator")
    h.loop(lambda: h.final())
    assert h.final() == DeploymentStatus("r1", request.artifact.info.sha256, "FAILED", 0.0,
                                         "cancelled: rollout r1 aborted by an operator", h.final().gate_metrics)
    assert h.detector is first and not h.manager.busy and h.manager.active.current is None
    # a deploy of the cancelled rollout arriving later (a replay, a command already in flight) never starts
    count = len(h.reports)
    h.manager.deploy(request)
    assert h.reports[count:] == [replace(h.final(), gate_metrics={})] and not h.manager.busy
    h.manager.close()


def test_a_cancel_drops_a_swap_already_queued_and_keeps_other_rollouts(tmp_path):
    v1 = tiny_onnx(tmp_path / "v1.onnx")
    h = Harness(tmp_path, v1)
    first = h.detector
    h.manager.deploy(h.request(same_network(v1, tmp_path / "v2.onnx")))
    deadline = time.monotonic() + 20
    while h.manager._swaps.empty() and time.monotonic() < deadline:  # the loop feeds it, but takes no swap
        with h.lock:
            found = h.detector.detect_batch([h.frames[0]])
        h.manager.observe([h.frames[0]], found, h.detector.last_inference_ms)
        time.sleep(0.002)
    h.manager.cancel("other-rollout", "not this one")
    assert not h.manager._swaps.empty(), "a cancel of another rollout keeps this one's swap"
    h.manager.cancel("r1", "aborted")
    assert h.manager.take_swap() is None and h.detector is first
    assert h.reports[-1].state == "FAILED" and h.reports[-1].reason == "cancelled: aborted"
    h.manager.close()


# ---- the runner: a deploy command through the real loop pieces ----

def test_the_agent_applies_a_deploy_command_and_reports_the_new_plan(tmp_path):
    from edgefleet.adaptive.plan import DevicePlan
    from edgefleet.adaptive.probe import HardwareProfile
    from edgefleet.agent.convert import command_from_pb
    from edgefleet.agent.options import RunOptions
    from edgefleet.agent.sources import open_source
    from edgefleet.agent.supervisor import Agent

    v1 = tiny_onnx(tmp_path / "v1.onnx")
    v2 = tmp_path / "v2.onnx"
    model = onnx.load(str(v1))
    model.producer_version = "v2"
    onnx.save(model, v2)
    signer, store = Signer(), Store()
    store.add(v2.read_bytes())
    options = RunOptions(controller="127.0.0.1:1", sources=["synthetic://96x64?objects=3"],
                         state_dir=tmp_path / "agent", gate_sample_every=1)
    one_thread = functools.partial(load_detector, intra_op_threads=1)  # sub-millisecond calls: no pool wake-ups
    agent = Agent(options, one_thread(v1), open_source, HardwareProfile(), DevicePlan(model="v1"))
    agent.engines.fetch, agent.engines.public_key, agent.engines._caps = store.fetch, lambda: signer.public, CPU
    agent.engines.load = one_thread
    agent.engines.gate_min_samples = 5
    command = agent_pb2.Command(command_id="c1", deploy=agent_pb2.DeployArtifact(
        rollout_id="r7", artifact=signer.artifact(v2.read_bytes(), name="v2.onnx"), gate_fps_ratio=0.2,
        gate_min_agreement=0.8))
    agent.commands.put(command_from_pb(command))
    agent.apply_commands(time.monotonic())
    first, version = agent.detector, agent._plan_version
    for stream in agent.loop.streams:
        stream.source.start()
    try:
        deadline = time.monotonic() + 20
        while agent.detector is first and time.monotonic() < deadline:
            ready = agent.loop._gather()
            if ready:
                agent.loop._process(ready)
            agent.engine_tick(time.monotonic())
    finally:
        for stream in agent.loop.streams:
            stream.source.stop()
        agent.engines.close()
    sha = hashlib.sha256(v2.read_bytes()).hexdigest()
    assert agent.detector is not first
    assert agent.plan.artifact_sha256 == sha and agent.plan.model == "v2"
    assert agent.plan.reason == "rollout r7" and agent._plan_version == version + 1
    sent = [m.deployment for m in agent.link._outgoing if m.WhichOneof("body") == "deployment"]
    assert sent[-1].state == types_pb2.DeploymentStatus.ACTIVE and sent[-1].rollout_id == "r7"
    assert agent._latest_deployment().state == "ACTIVE"
    agent.outbox.close()
