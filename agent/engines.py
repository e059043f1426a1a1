"""The engine manager: fetch, verify, build, warm up, shadow-test, swap in and roll back model artifacts.

A deployment runs on one worker thread, never on the detect loop:

    VERIFYING (signature, device fit) -> DOWNLOADING (resumable) -> VERIFYING (size, sha256, sidecar)
      -> BUILDING (ONNX -> TensorRT, devices with TensorRT only) -> WARMING_UP (load + warm-up)
      -> SHADOW_TESTING (the candidate runs on sampled frames beside the current engine)
      -> ACTIVE (swapped in between two ticks of the loop) | FAILED (the current engine stays)

Files under `<state_dir>/engines/`:

    staging/<sha256>.part        a download in progress; a later attempt (or process) resumes it
    <sha256>/<name>.<ext>        a verified artifact (+ its models manifest sidecar, a built engine)
    active.json                  which engine runs now, the one before it, and the crash-loop counter
    deployments.json             the final status of each rollout this device saw (idempotent replays)

Threads: the loop thread calls `deploy`, `rollback`, `observe`, `take_swap`, `swapped`, `tick`; it
alone changes `active.json`. The worker thread downloads, loads and shadow-tests, and hands a
warmed-up detector back through `take_swap`. Status reports go out from either thread through the
`report` callback, which must be thread-safe (Link.send_deployment is).

Only one deployment runs at a time: a deploy of another rollout that arrives meanwhile is refused
at once with FAILED("another deployment in progress ..."), so the controller's rollout state
machine sees it immediately instead of a device that silently queues work.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import AgentError

logger = logging.getLogger(__name__)

FINAL_STATES = ("ACTIVE", "FAILED", "ROLLED_BACK")
STATES = ("DOWNLOADING", "VERIFYING", "BUILDING", "WARMING_UP", "SHADOW_TESTING") + FINAL_STATES
EXTENSIONS = {"onnx": ".onnx", "tensorrt-engine": ".engine", "ultralytics-pt": ".pt"}
MODELS_MANIFEST_LABEL = "models.manifest"
"""ArtifactManifest.labels key that carries a TensorRT engine's models manifest (JSON, models.manifest),
which the tensorrt backend needs beside the engine (layout, decode parameters, profile)."""
NO_KEY_REASON = ("this device's identity has no controller public key (it was enrolled by an older agent): "
                 "re-enroll to learn the controller's key")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class EngineError(AgentError):
    """A deployment step that failed; the message is the reason the device reports."""


class SignatureError(EngineError):
    """An artifact manifest whose signature the controller's key does not verify (or no key)."""


class DownloadError(EngineError):
    """A download that cannot complete: refused, retries exhausted, or bytes that do not match."""


class FetchError(EngineError):
    """Raised by a fetch function; `retryable=False` for answers a retry cannot change (NOT_FOUND)."""

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


# ---- what the wire says, as plain data (agent.link converts the protobuf) ----

@dataclass(frozen=True)
class ArtifactInfo:
    """The signed description of an artifact (edgefleet.v1.ArtifactManifest)."""

    sha256: str
    size_bytes: int
    name: str
    format: str
    precision: str = ""
    input_width: int = 0
    input_height: int = 0
    class_names: tuple[str, ...] = ()
    tensorrt_version: str = ""
    gpu_compute_capability: str = ""
    labels: dict[str, str] = field(default_factory=dict, compare=False)

    def check(self) -> None:
        """Refuse values that would be unsafe as paths or cannot be downloaded (names field and value)."""
        if not _SHA256.fullmatch(self.sha256):
            raise EngineError(f"artifact sha256={self.sha256!r}: must be 64 lowercase hex digits")
        if self.size_bytes <= 0:
            raise EngineError(f"artifact size_bytes={self.size_bytes}: must be > 0")
        if self.format not in EXTENSIONS:
            raise EngineError(f"artifact format={self.format!r}: this agent runs {', '.join(EXTENSIONS)}")

    @property
    def file_name(self) -> str:
        """`<name>.<ext>`: the name reduced to [A-Za-z0-9._-], the extension from the format."""
        ext = EXTENSIONS[self.format]
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(self.name).name).strip("._") or self.sha256[:12]
        return stem if stem.lower().endswith(ext) else stem + ext

    @property
    def short(self) -> str:
        return f"{self.name or 'artifact'} ({self.sha256[:12]})"


@dataclass(frozen=True)
class SignedArtifact:
    """An artifact description and the controller's Ed25519 signature over `signed_bytes`, the
    manifest exactly as serialized on the wire (`manifest.SerializeToString(deterministic=True)`)."""

    info: ArtifactInfo
    signed_bytes: bytes
    signature: bytes


@dataclass(frozen=True)
class GateParams:
    """DeployArtifact's gate. 0 leaves a bound off: fps_ratio 0 accepts any speed, min_agreement 0
    any detections, window_s 0 ends the window as soon as it has its minimum number of samples."""

    fps_ratio: float = 0.0
    min_agreement: float = 0.0
    window_s: float = 0.0
    expect_different_detections: bool = False


@dataclass(frozen=True)
class DeployRequest:
    command_id: str
    rollout_id: str
    artifact: SignedArtifact
    gate: GateParams = GateParams()


@dataclass(frozen=True)
class DeploymentStatus:
    """edgefleet.v1.DeploymentStatus; `state` is the enum's name ("ACTIVE", ...)."""

    rollout_id: str
    artifact_sha256: str
    state: str
    progress: float = 0.0
    reason: str = ""
    gate_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def to_dict(self) -> dict:
        return asdict(self)


def verify_artifact_signature(public_key: bytes, artifact: Any) -> None:
    """Raise SignatureError unless `artifact`'s signature verifies with the controller's Ed25519 key.

    `artifact` is a SignedArtifact, or anything shaped like edgefleet.v1.Artifact (`manifest`,
    `signature`), whose manifest is then serialized deterministically, as the controller signs it.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not public_key:
        raise SignatureError(NO_KEY_REASON)
    if isinstance(artifact, SignedArtifact):
        data, signature, what = artifact.signed_bytes, artifact.signature, artifact.info.short
    else:
        data = artifact.manifest.SerializeToString(deterministic=True)
        signature, what = artifact.signature, f"{artifact.manifest.name} ({artifact.manifest.sha256[:12]})"
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes(public_key))
    except ValueError as err:
        raise SignatureError(f"the controller public key is {len(public_key)} bytes, not a raw 32-byte "
                             "Ed25519 key: re-enroll to learn the controller's key") from err
    try:
        key.verify(bytes(signature), data)
    except InvalidSignature as err:
        raise SignatureError(f"artifact {what}: the manifest's signature does not verify with the "
                             "controller's key (tampered, or signed by another controller); refused") from err


# ---- download ----

Fetch = Callable[[str, int], Iterable[Any]]
"""fetch(sha256, offset) -> chunks with `.offset`, `.data`, `.total_size` (edgefleet.v1.ArtifactChunk)."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256_prefix(path: Path) -> tuple[Any, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return digest, size


class Downloader:
    """Resumable download into `<root>/staging/<sha>.part`, then an atomic move to `<root>/<sha>/<file>`.

    Each attempt asks for the bytes from the .part file's size on, so an interrupted stream, or a
    process killed mid-download, costs only what was in flight. Stream errors are retried with
    exponential backoff (`attempts` in a row without progress); a FetchError(retryable=False) ends
    it at once. The sha256 is computed while the bytes arrive (the existing prefix is hashed once
    on resume); a size or sha256 mismatch at the end deletes the .part, so a retry starts fresh.
    """

    def __init__(self, root: Path, fetch: Fetch, *, attempts: int = 6, backoff_s: float = 0.5,
                 backoff_max_s: float = 10.0, stop: threading.Event | None = None, max_bytes_per_s: float = 0.0):
        self.root, self.fetch = Path(root), fetch
        self.attempts, self.backoff_s, self.backoff_max_s = attempts, backoff_s, backoff_max_s
        self.stop = stop or threading.Event()
        self.max_bytes_per_s = max_bytes_per_s
        """0: as fast as the link goes; else the average rate each fetch keeps under (metered links)."""
        self.requests: list[int] = []
        """The offset of every fetch call, in order (what a resumed download asked for)."""

    def staging_path(self, sha256: str) -> Path:
        return self.root / "staging" / f"{sha256}.part"

    def final_path(self, info: ArtifactInfo) -> Path:
        return self.root / info.sha256 / info.file_name

    def download(self, info: ArtifactInfo, progress: Callable[[int, int], None] = lambda done, total: None) -> Path:
        info.check()
        final, total = self.final_path(info), info.size_bytes
        if final.is_file() and final.stat().st_size == total and _sha256_prefix(final)[0].hexdigest() == info.sha256:
            progress(total, total)
            return final  # downloaded before (a replayed deploy, a rollback target)
        part = self.staging_path(info.sha256)
        part.parent.mkdir(parents=True, exist_ok=True)
        digest, hashed = None, -1
        failures = 0
        if part.exists() and part.stat().st_size:
            logger.info("resuming the download of %s at byte %d of %d (left by an earlier run)",
                        info.short, part.stat().st_size, total)
        while True:
            if self.stop.is_set():
                raise DownloadError(f"download of {info.short} cancelled")
            offset = part.stat().st_size if part.exists() else 0
            if offset > total:
                logger.warning("%s holds %d bytes, more than the artifact's %d; starting over", part, offset, total)
                part.unlink()
                offset = 0
            if hashed != offset:
                digest, hashed = _sha256_prefix(part) if offset else (hashlib.sha256(), 0)
            if offset == total:
                break
            try:
                hashed = self._attempt(info, part, offset, digest, progress)
            except FetchError as err:
                if not err.retryable:
                    raise DownloadError(f"download of {info.short} refused at byte {offset}: {err}") from err
                error: Exception = err
            except DownloadError:
                raise
            except Exception as err:  # noqa: BLE001 - any stream error (grpc.RpcError, OSError) is retried
                error = err
            else:
                if hashed == total:
                    break
                error = FetchError(f"stream ended at byte {hashed} of {total}")
            now = part.stat().st_size if part.exists() else 0
            if hashed != now:
                hashed = -1  # a write was cut short: hash the prefix again before the next attempt
            failures = 0 if now > offset else failures + 1
            if failures >= self.attempts:
                raise DownloadError(f"download of {info.short} failed {failures} times in a row at byte {now} "
                                    f"of {total}: {error}") from error
            delay = min(self.backoff_max_s, self.backoff_s * (2 ** max(0, failures - 1)))
            logger.warning("download of %s interrupted at byte %d of %d (%s); resuming in %.1f s",
                           info.short, now, total, error, delay)
            if self.stop.wait(delay):
                raise DownloadError(f"download of {info.short} cancelled")
        return self._finish(info, part, digest, final)

    def _attempt(self, info: ArtifactInfo, part: Path, offset: int, digest, progress) -> int:
        """One fetch call from `offset`, appending to `part`; returns the bytes now written (and hashed)."""
        total = info.size_bytes
        self.requests.append(offset)
        started = time.monotonic()
        with part.open("ab") as fh:
            position = offset
            for chunk in self.fetch(info.sha256, offset):
                if self.stop.is_set():
                    raise DownloadError(f"download of {info.short} cancelled")
                if chunk.total_size and chunk.total_size != total:
                    part.unlink(missing_ok=True)
                    raise DownloadError(f"the controller serves {chunk.total_size} bytes for {info.short}; "
                                        f"its signed manifest says {total}")
                if chunk.offset != position:
                    raise FetchError(f"chunk at offset {chunk.offset}, expected {position}")
                data = bytes(chunk.data)
                if position + len(data) > total:
                    fh.close()
                    part.unlink(missing_ok=True)
                    raise DownloadError(f"the controller sent more than the {total} bytes of {info.short} "
                                        "(corrupt stream); deleted the partial file")
                fh.write(data)
                digest.update(data)
                position += len(data)
                progress(position, total)
                if self.max_bytes_per_s:
                    ahead = (position - offset) / self.max_bytes_per_s - (time.monotonic() - started)
                    if ahead > 0 and self.stop.wait(ahead):
                        raise DownloadError(f"download of {info.short} cancelled")
            fh.flush()
            os.fsync(fh.fileno())
        return position

    def _finish(self, info: ArtifactInfo, part: Path, digest, final: Path) -> Path:
        got = digest.hexdigest()
        if got != info.sha256:
            part.unlink(missing_ok=True)
            raise DownloadError(f"downloaded {info.short} has sha256 {got}, not the signed {info.sha256} "
                                "(corrupt or tampered bytes); deleted the partial file, a retry starts over")
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, final)
        _fsync_dir(final.parent)
        logger.info("downloaded %s to %s", info.short, final)
        return final


# ---- models sidecar, device fit, engine build ----

def check_device(info: ArtifactInfo, caps) -> None:
    """Raise EngineError unless this device (models.manifest.DeviceCaps) can run the artifact."""
    from models.errors import IncompatibleArtifact
    from models.manifest import check_compatible

    if info.format == "tensorrt-engine" and not (info.tensorrt_version and info.gpu_compute_capability):
        raise EngineError(f"engine {info.short} does not say which TensorRT version and GPU compute "
                          "capability it was built for; refused")
    wanted = replace(info, tensorrt_version=info.tensorrt_version or None,
                     gpu_compute_capability=info.gpu_compute_capability or None)
    try:
        check_compatible(wanted, caps, name=info.short)  # reads format, tensorrt_version, gpu_compute_capability
    except IncompatibleArtifact as err:
        raise EngineError(str(err)) from err


def install_sidecar(path: Path, info: ArtifactInfo) -> None:
    """Write the models manifest (`<file>.manifest.json`) that lets `models.load_detector` check and load it.

    ONNX: made from the file's own metadata (`manifest_for_onnx`), and its classes must be the signed
    ones. Engine: taken from the label `models.manifest` (the engine's manifest as `edgefleet model
    engine` wrote it), whose sha256 must be the artifact's. Ultralytics .pt files need none.
    """
    from models.errors import ModelError
    from models.manifest import manifest_for_onnx, parse_manifest, write_manifest

    try:
        if info.format == "onnx":
            manifest = manifest_for_onnx(path)
            if info.class_names and tuple(info.class_names) != manifest.class_names:
                raise EngineError(f"{info.short}: the signed manifest lists {len(info.class_names)} classes "
                                  f"({', '.join(info.class_names[:3])}, ...); the model has "
                                  f"{len(manifest.class_names)} ({', '.join(manifest.class_names[:3])}, ...)")
        elif info.format == "tensorrt-engine":
            text = info.labels.get(MODELS_MANIFEST_LABEL)
            if not text:
                raise EngineError(f"engine {info.short} comes without its models manifest (label "
                                  f"{MODELS_MANIFEST_LABEL!r}); roll out its ONNX and let the device build")
            manifest = parse_manifest(text, source=f"label {MODELS_MANIFEST_LABEL}")
        else:
            return
    except ModelError as err:
        raise EngineError(f"{info.short} is not a model this agent can run: {err}") from err
    if manifest.file_sha256 != info.sha256:
        raise EngineError(f"{info.short}: its models manifest describes sha256 {manifest.file_sha256}")
    write_manifest(manifest, path)


def needs_build(info: ArtifactInfo, caps) -> bool:
    """An ONNX on a device with TensorRT and a GPU runs as an engine built here; elsewhere onnxruntime runs it."""
    return info.format == "onnx" and bool(caps.tensorrt_version and caps.gpu_compute_capability)


def build_engine_cached(onnx_path: Path, info: ArtifactInfo) -> Path:
    """`<sha>/<stem>-<precision>.engine` beside the ONNX, built once per ONNX sha256 (the folder is its sha).

    UNVERIFIED here (no TensorRT, no GPU on the machines this was written on): it calls
    models.pipeline.cmd_engine, whose SDK part models.tensorrt_build marks unverified too. Exercise
    it on a device with TensorRT + pycuda: `python -c "from agent.engines import ArtifactInfo,
    build_engine_cached; from models.bundled import default_model; p = default_model();
    print(build_engine_cached(p, ArtifactInfo('0' * 64, 1, p.name, 'onnx', 'fp16')))"`.
    """
    from models.errors import ModelError
    from models.manifest import probe_device, verify_artifact
    from models.pipeline import cmd_engine

    precision = info.precision if info.precision in ("fp16", "fp32") else "fp16"  # int8 needs calibration frames
    out = onnx_path.with_name(f"{onnx_path.stem}-{precision}.engine")
    if out.is_file():
        try:
            verify_artifact(out, device=probe_device())
            return out
        except ModelError as err:
            logger.warning("cached engine %s is unusable (%s); building again", out, err)
    try:
        return cmd_engine(onnx_path, out, precision).path
    except ModelError as err:
        raise EngineError(f"building a TensorRT engine from {info.short} failed: {err}") from err


# ---- shadow gate ----

def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (n, 4 xyxy) with every box in `b` (m, 4): an (n, m) matrix."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)), dtype=np.float32)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    same = np.all(a[:, None, :] == b[None, :, :], axis=2)  # zero-area boxes (clipped at an edge) match themselves
    return np.where(union > 0, inter / np.maximum(union, 1e-9), same.astype(np.float32))


def match_count(current, candidate, iou_threshold: float = 0.5) -> int:
    """Greedy one-to-one matches (highest IoU first) of same-class boxes with IoU >= `iou_threshold`."""
    iou = box_iou(current.xyxy, candidate.xyxy)
    if not iou.size:
        return 0
    iou = np.where(current.class_id[:, None] == candidate.class_id[None, :], iou, 0.0)
    matches, used_a, used_b = 0, set(), set()
    order = np.argsort(-iou, axis=None)
    for flat in order:
        i, j = divmod(int(flat), iou.shape[1])
        if iou[i, j] < iou_threshold:
            break
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            matches += 1
    return matches


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    reason: str
    metrics: dict[str, float]


class ShadowGate:
    """Runs a candidate detector on frames the current engine also detected, and judges it.

    The loop thread calls `offer(frame, current_detections, current_ms)` (a queue of one, the newest
    sample wins, never blocks); the worker thread runs `run(stop)`, which takes samples, runs the
    candidate on each and accumulates:

    - latency: the candidate's inference time per frame (its `last_inference_ms`, the runtime's run
      only, the measure the loop's health uses for the current engine); p50 and p95.
    - fps_ratio: the candidate's throughput relative to the current engine's over the same window,
      median(current ms per frame) / median(candidate ms per frame); 1.0 is as fast, 0.5 half as
      fast. Medians, so that a few frames delayed by the scheduler do not decide. Both run on the
      device at once during the window, so both are measured under the same load.
    - agreement: detection F1 between candidate and current, over all sampled frames together.
      Boxes scoring at least `score_threshold` (the publish threshold: what the device would store)
      are matched one-to-one, same class and IoU >= `iou_threshold` (0.5), highest IoU first;
      agreement = 2 * matches / (current boxes + candidate boxes). 1.0 when neither finds anything.

    The window ends once `window_s` has passed AND `min_samples` frames were tested, or at
    `max_samples`; after `timeout_s` without enough samples the gate fails. Passing needs all of:
    the window complete, p95 within the plan's latency budget (when it has one), fps_ratio >=
    the gate's fps_ratio, and agreement >= min_agreement unless the rollout expects different
    detections (a new class list, a retrained model). The candidate was loaded and warmed up
    before it got here (EngineManager reports WARMING_UP failures itself).
    """

    def __init__(self, candidate, params: GateParams, *, latency_budget_ms: float = 0.0,
                 score_threshold: float = 0.25, iou_threshold: float = 0.5, min_samples: int = 10,
                 max_samples: int = 300, timeout_s: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.candidate, self.params = candidate, params
        self.latency_budget_ms = latency_budget_ms
        self.score_threshold, self.iou_threshold = score_threshold, iou_threshold
        self.min_samples, self.max_samples = min_samples, max_samples
        self.timeout_s = timeout_s if timeout_s is not None else max(60.0, 4 * params.window_s)
        self.clock = clock
        self.started = clock()
        self._inbox: queue.Queue = queue.Queue(maxsize=1)
        self.candidate_ms: list[float] = []
        self.current_ms: list[float] = []
        self.current_boxes = self.candidate_boxes = self.matches = 0

    # loop thread
    def offer(self, frame: np.ndarray, current, current_ms: float) -> None:
        """Hand over a sample; replaces one not taken yet. Never blocks."""
        try:
            self._inbox.get_nowait()
        except queue.Empty:
            pass
        try:
            self._inbox.put_nowait((frame, current, current_ms))
        except queue.Full:  # the worker cannot refill it; a single producer never gets here
            pass

    # worker thread
    def evaluate(self, frame: np.ndarray, current, current_ms: float) -> None:
        """Run the candidate on one frame and add it to the window."""
        t0 = time.perf_counter()
        found = self.candidate.detect(frame)
        wall_ms = (time.perf_counter() - t0) * 1000
        self.candidate_ms.append(float(getattr(self.candidate, "last_inference_ms", 0.0)) or wall_ms)
        self.current_ms.append(float(current_ms))
        found = found[found.confidence >= self.score_threshold]
        current = current[current.confidence >= self.score_threshold]
        self.current_boxes += len(current)
        self.candidate_boxes += len(found)
        self.matches += match_count(current, found, self.iou_threshold)

    @property
    def samples(self) -> int:
        return len(self.candidate_ms)

    def elapsed(self) -> float:
        return self.clock() - self.started

    def done(self) -> bool:
        if self.samples >= self.max_samples:
            return True
        return self.samples >= self.min_samples and self.elapsed() >= self.params.window_s

    def timed_out(self) -> bool:
        return self.elapsed() >= self.timeout_s

    def run(self, stop: threading.Event, progress: Callable[[float], None] = lambda fraction: None) -> GateVerdict:
        """Take and evaluate samples until the window is complete, it times out, or `stop` is set."""
        while not (self.done() or self.timed_out() or stop.is_set()):
            try:
                sample = self._inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            self.evaluate(*sample)
            progress(self.fraction())
        return self.verdict()

    def fraction(self) -> float:
        by_time = min(1.0, self.elapsed() / self.params.window_s) if self.params.window_s else 1.0
        return min(1.0, max(self.samples / self.max_samples, min(by_time, self.samples / self.min_samples)))

    def metrics(self) -> dict[str, float]:
        candidate_p50, current_p50 = percentile(self.candidate_ms, 50), percentile(self.current_ms, 50)
        boxes = self.current_boxes + self.candidate_boxes
        return {
            "samples": float(self.samples), "window_s": round(self.elapsed(), 3),
            "candidate_ms_p50": candidate_p50, "candidate_ms_p95": percentile(self.candidate_ms, 95),
            "current_ms_p50": current_p50, "current_ms_p95": percentile(self.current_ms, 95),
            "fps_ratio": current_p50 / candidate_p50 if candidate_p50 > 0 else 0.0,
            "agreement": 2.0 * self.matches / boxes if boxes else 1.0,
            "current_boxes": float(self.current_boxes), "candidate_boxes": float(self.candidate_boxes),
        }

    def verdict(self) -> GateVerdict:
        m, p = self.metrics(), self.params
        if not self.done():
            return GateVerdict(False, f"the shadow test got {self.samples} sampled frame(s) in {m['window_s']:.0f} s "
                                      f"(needs {self.min_samples} over {p.window_s:.0f} s); is the source running?", m)
        problems = []
        if self.latency_budget_ms > 0 and m["candidate_ms_p95"] > self.latency_budget_ms:
            problems.append(f"p95 {m['candidate_ms_p95']:.1f} ms exceeds the plan's latency budget "
                            f"{self.latency_budget_ms:.1f} ms")
        if m["fps_ratio"] < p.fps_ratio:
            problems.append(f"throughput {m['fps_ratio']:.2f}x the current engine's (gate {p.fps_ratio:.2f}x; "
                            f"p50 {m['candidate_ms_p50']:.1f} ms vs {m['current_ms_p50']:.1f} ms)")
        if not p.expect_different_detections and m["agreement"] < p.min_agreement:
            problems.append(f"detection agreement {m['agreement']:.2f} with the current engine "
                            f"(gate {p.min_agreement:.2f}; F1 of same-class IoU>={self.iou_threshold} matches)")
        summary = (f"{self.samples} frames, p95 {m['candidate_ms_p95']:.1f} ms, {m['fps_ratio']:.2f}x throughput, "
                   f"agreement {m['agreement']:.2f}")
        if problems:
            return GateVerdict(False, "; ".join(problems) + f" ({summary})", m)
        return GateVerdict(True, f"passed: {summary}", m)


# ---- active.json ----

@dataclass(frozen=True)
class EngineRef:
    """An engine the agent ran or runs. sha256 "" and path "": the --model (or bundled) model."""

    sha256: str
    path: str
    rollout_id: str = ""
    name: str = ""


class ActiveEngines:
    """`<state_dir>/engines/active.json`, changed on the loop thread only:

        {"current": {"sha256", "path", "rollout_id", "name"} | null,   null: the --model/bundled one
         "previous": {...} | null,                                     what a rollback returns to
         "swapped_at": unix time of the last swap | null,
         "confirmed": bool,                                            the current engine proved healthy
         "unconfirmed_starts": int}

    Crash-loop rule: every agent start while the current engine is unconfirmed counts one start
    (`on_start`). The engine is confirmed after `confirm_after_s` seconds of running (the manager's
    `tick`) or a clean exit. When the count reaches `crash_loop_starts` (3) at a start, the agent
    goes back to the previous engine and reports ROLLED_BACK ("crash loop after swap: ...").
    """

    def __init__(self, path: Path, confirm_after_s: float = 60.0, crash_loop_starts: int = 3):
        self.path, self.confirm_after_s, self.crash_loop_starts = Path(path), confirm_after_s, crash_loop_starts
        self.current: EngineRef | None = None
        self.previous: EngineRef | None = None
        self.swapped_at: float | None = None
        self.confirmed = True
        self.unconfirmed_starts = 0
        self.startup_status: DeploymentStatus | None = None
        """A rollback `on_start` did, to report once the Session is up."""
        self.load()

    def load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            logger.error("%s is unreadable (%s); starting with the --model engine", self.path, err)
            return
        try:
            self.current = EngineRef(**data["current"]) if data.get("current") else None
            self.previous = EngineRef(**data["previous"]) if data.get("previous") else None
            self.swapped_at = data.get("swapped_at")
            self.confirmed = bool(data.get("confirmed", True))
            self.unconfirmed_starts = int(data.get("unconfirmed_starts", 0))
        except (TypeError, KeyError, ValueError) as err:
            logger.error("%s is malformed (%r); starting with the --model engine", self.path, err)
            self.current = self.previous = None

    def to_dict(self) -> dict:
        return {"current": asdict(self.current) if self.current else None,
                "previous": asdict(self.previous) if self.previous else None,
                "swapped_at": self.swapped_at, "confirmed": self.confirmed,
                "unconfirmed_starts": self.unconfirmed_starts}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".active-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(self.to_dict(), fh, indent=2)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def on_start(self) -> DeploymentStatus | None:
        """Count this start; after `crash_loop_starts` unconfirmed ones, go back to the previous engine."""
        if self.current is None or self.confirmed:
            return None
        self.unconfirmed_starts += 1
        if self.unconfirmed_starts < self.crash_loop_starts:
            logger.warning("engine %s is unconfirmed: start %d of %d before it is rolled back",
                           self.current.name, self.unconfirmed_starts, self.crash_loop_starts)
            self.save()
            return None
        failed = self.current
        reason = (f"crash loop after swap: {self.unconfirmed_starts} starts without "
                  f"{self.confirm_after_s:.0f} s of healthy running")
        self.fall_back(reason)
        self.startup_status = DeploymentStatus(failed.rollout_id, failed.sha256, "ROLLED_BACK", 1.0, reason)
        return self.startup_status

    def fall_back(self, reason: str) -> None:
        """Make the previous engine current (the --model one when it has no file any more)."""
        target = self.previous
        if target is not None and (not target.sha256 or not Path(target.path).is_file()):
            target = None
        logger.error("engine %s: %s; going back to %s", self.current.name if self.current else "?", reason,
                     target.name if target else "the --model engine")
        self.current, self.previous = target, None
        self.swapped_at, self.confirmed, self.unconfirmed_starts = time.time(), True, 0
        self.save()

    def swapped(self, new: EngineRef | None, keep_previous: bool = True) -> None:
        """`new` runs now (None: the --model one); it is unconfirmed until it has run long enough."""
        before = self.current or EngineRef("", "", "", "")
        self.previous = before if keep_previous else None
        self.current = new
        self.swapped_at, self.confirmed, self.unconfirmed_starts = time.time(), new is None, 0
        self.save()

    def confirm(self) -> None:
        if not self.confirmed:
            self.confirmed, self.unconfirmed_starts = True, 0
            self.save()
            logger.info("engine %s confirmed healthy", self.current.name if self.current else "--model")


# ---- the manager ----

@dataclass
class Swap:
    """A warmed-up detector for the loop to swap in between ticks, then hand back to `swapped`."""

    kind: Literal["deploy", "rollback"]
    detector: Any
    ref: EngineRef | None          # what becomes current; None: the --model engine
    status: DeploymentStatus       # reported once swapped (ACTIVE or ROLLED_BACK)
    plan_reason: str
    command_id: str = ""
    replaces: EngineRef | None = None   # rollback: the engine it expects to replace

    @property
    def artifact_sha256(self) -> str:
        return self.ref.sha256 if self.ref else ""

    @property
    def name(self) -> str:
        return self.ref.name if self.ref else ""


class EngineManager:
    """Runs deployments and rollbacks on one worker thread; see the module docstring for threads.

    `load(path)` returns a warmed-up Detector (it runs on the worker thread); `report(status)` and
    `result(command_id, ok, error)` send upstream (thread-safe); `public_key()` is the controller's
    Ed25519 key from the identity (b"" when unknown); `latency_budget_ms()` the plan's budget (0: none);
    `fallback_model` what a rollback to the --model engine loads (None: the bundled model).
    `build(onnx_path, info)` makes a TensorRT engine on devices that have TensorRT (`needs_build`).
    """

    def __init__(self, state_dir: Path, *, fetch: Fetch, load: Callable[[Path], Any],
                 report: Callable[[DeploymentStatus], None],
                 result: Callable[[str, bool, str], None] = lambda command_id, ok, error: None,
                 public_key: Callable[[], bytes] = lambda: b"", active: ActiveEngines | None = None,
                 fallback_model: Path | None = None, caps=None,
                 build: Callable[[Path, ArtifactInfo], Path] = build_engine_cached,
                 latency_budget_ms: Callable[[], float] = lambda: 0.0, sample_every: int = 5,
                 publish_threshold: float = 0.25, gate_min_samples: int = 10, gate_max_samples: int = 300,
                 confirm_after_s: float | None = None, download_backoff_s: float = 0.5,
                 download_max_bytes_per_s: float = 0.0, progress_every_s: float = 1.0):
        if sample_every < 1:
            raise EngineError(f"sample_every must be >= 1, got {sample_every}")
        self.root = Path(state_dir) / "engines"
        self.active = active or ActiveEngines(self.root / "active.json")
        self.confirm_after_s = self.active.confirm_after_s if confirm_after_s is None else confirm_after_s
        self.fetch, self.load, self._report_cb, self._result_cb = fetch, load, report, result
        self.public_key, self.fallback_model, self.build = public_key, fallback_model, build
        self.latency_budget_ms, self.sample_every = latency_budget_ms, sample_every
        self.publish_threshold = publish_threshold
        self.gate_min_samples, self.gate_max_samples = gate_min_samples, gate_max_samples
        self.download_backoff_s, self.progress_every_s = download_backoff_s, progress_every_s
        self.download_max_bytes_per_s = download_max_bytes_per_s
        self._caps = caps
        self._lock = threading.Lock()
        self._statuses: dict[str, DeploymentStatus] = self._load_statuses()
        self._latest: DeploymentStatus | None = None
        self._in_progress: DeployRequest | None = None
        self._job_stop = threading.Event()
        self._swaps: queue.SimpleQueue[Swap] = queue.SimpleQueue()
        self._executor: ThreadPoolExecutor | None = None
        self.gate: ShadowGate | None = None
        """The shadow test running now; the loop feeds it through `observe`."""
        self._detected = 0
        self._running_since = time.monotonic()
        if self.active.startup_status is not None:
            self._report(self.active.startup_status)

    @property
    def caps(self):
        if self._caps is None:
            from models.manifest import probe_device

            self._caps = probe_device()
        return self._caps

    @property
    def busy(self) -> bool:
        return self._in_progress is not None

    # ---- status bookkeeping ----

    def _load_statuses(self) -> dict[str, DeploymentStatus]:
        try:
            data = json.loads((self.root / "deployments.json").read_text())
            return {rid: DeploymentStatus(**s) for rid, s in data.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError) as err:
            logger.error("deployments.json is unreadable (%r); forgetting past rollouts", err)
            return {}

    def _save_statuses(self) -> None:
        final = {rid: s.to_dict() for rid, s in self._statuses.items() if s.final}
        final = dict(list(final.items())[-50:])
        from models.manifest import atomic_write_bytes

        atomic_write_bytes(self.root / "deployments.json", json.dumps(final, indent=2).encode())

    def _report(self, status: DeploymentStatus) -> None:
        with self._lock:
            self._latest = status
            if status.rollout_id:
                self._statuses[status.rollout_id] = status
                if status.final:
                    try:
                        self._save_statuses()
                    except OSError as err:
                        logger.error("cannot save deployments.json: %s", err)
        log = logger.warning if status.state in ("FAILED", "ROLLED_BACK") else logger.info
        log("rollout %s (%s): %s%s%s", status.rollout_id or "-", status.artifact_sha256[:12], status.state,
            f" {status.progress:.0%}" if not status.final else "", f": {status.reason}" if status.reason else "")
        try:
            self._report_cb(status)
        except Exception:
            logger.exception("reporting a deployment status failed")

    def latest_status(self) -> DeploymentStatus | None:
        """The last status reported (any thread): what the link re-sends after each (re)connect."""
        with self._lock:
            return self._latest

    def status_of(self, rollout_id: str) -> DeploymentStatus | None:
        with self._lock:
            return self._statuses.get(rollout_id)

    # ---- loop thread ----

    def deploy(self, request: DeployRequest) -> None:
        """Start a deployment, or answer a replayed one (the controller resends on every reconnect)."""
        info, rid = request.artifact.info, request.rollout_id
        prior = self.status_of(rid)
        if prior is not None and prior.final and prior.artifact_sha256 == info.sha256:
            logger.info("rollout %s was already %s here; reporting it again", rid, prior.state)
            self._report(prior)
            return
        running = self._in_progress
        if running is not None:
            if running.rollout_id == rid and running.artifact.info.sha256 == info.sha256:
                logger.info("rollout %s is already in progress; ignoring the duplicate", rid)
                return
            self._report(DeploymentStatus(rid, info.sha256, "FAILED", 0.0,
                                          f"another deployment in progress (rollout {running.rollout_id}, "
                                          f"{running.artifact.info.short}); deploy again when it has finished"))
            return
        current = self.active.current
        if current is not None and current.sha256 == info.sha256:
            self.active.current = replace(current, rollout_id=rid)
            self.active.save()
            self._report(DeploymentStatus(rid, info.sha256, "ACTIVE", 1.0, "already running this artifact"))
            return
        self._in_progress = request
        self._job_stop = threading.Event()
        self._submit(self._run_deploy, request, self._job_stop)

    def rollback(self, command_id: str, reason: str = "") -> None:
        """Go back to the previous engine; cancels a deployment in progress first."""
        with self._lock:
            self._job_stop.set()  # a deploy job checks this under the lock before it queues its swap
        self._drop_pending_swaps("cancelled: a rollback was requested")
        previous, current = self.active.previous, self.active.current
        if previous is None:
            self._result(command_id, False, "no previous engine to roll back to")
            return
        self._submit(self._run_rollback, command_id, reason, previous, current)

    def observe(self, frames: list[np.ndarray], detections: list, inference_ms: float) -> None:
        """After each detector call: hand every `sample_every`-th detected frame to the shadow test."""
        gate = self.gate
        if gate is None or not frames:
            return
        for frame, dets in zip(frames, detections):
            self._detected += 1
            if self._detected % self.sample_every == 0:
                gate.offer(frame, dets, inference_ms / len(frames))

    def take_swap(self) -> Swap | None:
        """A detector ready to swap in now, if any; the caller swaps it in, then calls `swapped`."""
        try:
            swap = self._swaps.get_nowait()
        except queue.Empty:
            return None
        if swap.kind == "rollback" and self.active.current != swap.replaces:
            swap.detector.close()
            self._result(swap.command_id, False, "the engine changed while the rollback loaded; send it again")
            return None
        return swap

    def swapped(self, swap: Swap, now: float | None = None) -> None:
        """The loop now runs `swap.detector`: record it (active.json), report, confirm timer restarts."""
        self._running_since = time.monotonic() if now is None else now
        if swap.kind == "deploy":
            self.active.swapped(swap.ref)
            self._in_progress = None
        else:
            self.active.current, self.active.previous = swap.ref, None
            self.active.swapped_at, self.active.confirmed, self.active.unconfirmed_starts = time.time(), True, 0
            self.active.save()
        self._report(swap.status)
        if swap.command_id:
            self._result(swap.command_id, True, "")
        self._collect_garbage()

    def tick(self, now: float) -> None:
        """Between ticks: confirm the current engine once it ran `confirm_after_s` without a crash."""
        if not self.active.confirmed and now - self._running_since >= self.confirm_after_s:
            self.active.confirm()

    def close(self, clean: bool = False) -> None:
        """Stop the worker (cancels a deployment in progress); a clean exit confirms the current engine."""
        with self._lock:
            self._job_stop.set()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._drop_pending_swaps("cancelled: the agent stopped")
        if clean:
            self.active.confirm()

    # ---- worker thread ----

    def _submit(self, fn, *args) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._executor.submit(fn, *args)

    def _result(self, command_id: str, ok: bool, error: str) -> None:
        if not command_id:
            return
        try:
            self._result_cb(command_id, ok, error)
        except Exception:
            logger.exception("reporting a command result failed")

    def _drop_pending_swaps(self, reason: str) -> None:
        while True:
            try:
                swap = self._swaps.get_nowait()
            except queue.Empty:
                return
            swap.detector.close()
            if swap.kind == "deploy":
                self._in_progress = None
                self._report(replace(swap.status, state="FAILED", reason=reason, progress=0.0))
            else:
                self._result(swap.command_id, False, reason)

    def _run_deploy(self, request: DeployRequest, stop: threading.Event) -> None:
        info, rid = request.artifact.info, request.rollout_id
        detector = None

        def status(state: str, progress: float = 0.0, reason: str = "", metrics: dict | None = None) -> None:
            self._report(DeploymentStatus(rid, info.sha256, state, progress, reason, dict(metrics or {})))

        try:
            info.check()
            status("VERIFYING")
            verify_artifact_signature(self.public_key(), request.artifact)
            check_device(info, self.caps)
            status("DOWNLOADING")
            downloader = Downloader(self.root, self.fetch, backoff_s=self.download_backoff_s, stop=stop,
                                    max_bytes_per_s=self.download_max_bytes_per_s)
            path = downloader.download(info, self._throttled(lambda fraction: status("DOWNLOADING", fraction)))
            status("VERIFYING", 0.5)  # size and sha256 were checked as the bytes arrived
            install_sidecar(path, info)
            if needs_build(info, self.caps):
                status("BUILDING")
                path = self.build(path, info)
            status("WARMING_UP")
            try:
                detector = self.load(path)
            except Exception as err:
                raise EngineError(f"loading {info.short} failed: {err}") from err
            status("SHADOW_TESTING")
            gate = ShadowGate(detector, request.gate, latency_budget_ms=self.latency_budget_ms(),
                              score_threshold=self.publish_threshold, min_samples=self.gate_min_samples,
                              max_samples=self.gate_max_samples)
            self.gate = gate
            try:
                verdict = gate.run(stop, self._throttled(lambda fraction: status("SHADOW_TESTING", fraction)))
            finally:
                self.gate = None
            if not verdict.passed:
                raise GateFailed(f"shadow test failed: {verdict.reason}", verdict.metrics)
            swap = Swap("deploy", detector, EngineRef(info.sha256, str(path), rid, Path(info.name).stem or info.name),
                        DeploymentStatus(rid, info.sha256, "ACTIVE", 1.0, verdict.reason, verdict.metrics),
                        f"rollout {rid}")
            with self._lock:
                if stop.is_set():
                    raise EngineError("cancelled before the swap")
                self._swaps.put(swap)  # the loop swaps it in between two ticks, then calls swapped()
            detector = None
        except Exception as err:
            if not isinstance(err, EngineError):
                logger.exception("deployment %s failed", rid)
            reason = str(err) if isinstance(err, EngineError) else f"{type(err).__name__}: {err}"
            if stop.is_set() and "cancel" not in reason:
                reason = f"cancelled: {reason}"
            if detector is not None:
                detector.close()
            self._in_progress = None
            status("FAILED", 0.0, reason, getattr(err, "metrics", None))

    def _run_rollback(self, command_id: str, reason: str, target: EngineRef, replaces: EngineRef | None) -> None:
        failed = replaces or EngineRef("", "", "", "")
        try:
            if target.path:
                path = Path(target.path)
            elif self.fallback_model is not None:
                path = self.fallback_model
            else:
                from models.bundled import default_model

                path = default_model()
            detector = self.load(path)
        except Exception as err:  # noqa: BLE001 - the running engine stays; the operator hears why
            self._result(command_id, False, f"loading the previous engine failed: {err}")
            return
        why = f"rollback command: {reason}" if reason else "rollback command"
        self._swaps.put(Swap("rollback", detector, target if target.sha256 else None,
                             DeploymentStatus(failed.rollout_id, failed.sha256, "ROLLED_BACK", 1.0, why),
                             why, command_id, replaces))

    def _throttled(self, send: Callable[[float], None]) -> Callable[..., None]:
        """Progress callback reporting at most every 10 % or `progress_every_s`, whichever comes first."""
        last = {"at": 0.0, "fraction": -1.0}

        def update(done: float, total: float | None = None) -> None:
            fraction = done / total if total else float(done)
            now = time.monotonic()
            if fraction - last["fraction"] >= 0.1 or now - last["at"] >= self.progress_every_s:
                last.update(at=now, fraction=fraction)
                send(min(1.0, fraction))

        return update

    def _collect_garbage(self) -> None:
        """Delete engine folders that are neither current nor previous (keeps staging/ for resumes)."""
        keep = {r.sha256 for r in (self.active.current, self.active.previous) if r is not None and r.sha256}
        try:
            folders = [p for p in self.root.iterdir() if p.is_dir() and _SHA256.fullmatch(p.name)]
        except OSError:
            return
        for folder in folders:
            if folder.name not in keep:
                shutil.rmtree(folder, ignore_errors=True)


class GateFailed(EngineError):
    """The shadow test's verdict was a fail; carries its metrics for the report."""

    def __init__(self, message: str, metrics: dict[str, float]):
        super().__init__(message)
        self.metrics = metrics
