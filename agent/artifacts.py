"""Artifacts on the device: the signed description, its signature check, the resumable download,
the models manifest sidecar, the device-fit check and the on-device engine build.

    staging/<sha256>.part        a download in progress; a later attempt (or process) resumes it
    <sha256>/<name>.<ext>        a verified artifact (+ its models manifest sidecar, a built engine)
    <sha256>/<files of a bundle> an OpenVINO IR or NCNN model, unpacked from its tar (models.bundle),
                                 which is deleted once every file checks out
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DownloadError, EngineError, FetchError, SignatureError

logger = logging.getLogger(__name__)

EXTENSIONS = {"onnx": ".onnx", "tensorrt-engine": ".engine", "ultralytics-pt": ".pt", "openvino-ir": ".tar",
              "ncnn": ".tar"}
"""The downloaded file's extension per format: a model of several files (models.bundle) comes as a tar."""
NO_KEY_REASON = ("this device's identity has no controller public key (it was enrolled by an older agent): "
                 "re-enroll to learn the controller's key")
SHA256 = re.compile(r"[0-9a-f]{64}")


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
        if not SHA256.fullmatch(self.sha256):
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


def _is_downloaded(final: Path, info: ArtifactInfo) -> bool:
    """`final` holds the artifact already (its size and sha256 are the signed ones)."""
    from edgefleet.models.manifest import sha256_file

    return final.is_file() and final.stat().st_size == info.size_bytes and sha256_file(final) == info.sha256


def _part_offset(part: Path, total: int) -> int:
    """Where a download into `part` resumes: its size, or 0 after deleting a file longer than `total`."""
    offset = part.stat().st_size if part.exists() else 0
    if offset > total:
        logger.warning("%s holds %d bytes, more than the artifact's %d; starting over", part, offset, total)
        part.unlink()
        offset = 0
    return offset


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
        """The model file, downloaded (or found from before); a bundle's files unpacked beside it."""
        info.check()
        if info.format not in BUNDLED:
            return self._download(info, progress)
        found = installed_bundle(self.final_path(info).parent, info)
        if found is not None:
            progress(info.size_bytes, info.size_bytes)
            return found
        return unpack_bundle(self._download(info, progress), info)

    def _download(self, info: ArtifactInfo, progress: Callable[[int, int], None]) -> Path:
        final, total = self.final_path(info), info.size_bytes
        if _is_downloaded(final, info):
            progress(total, total)
            return final  # downloaded before (a replayed deploy, a rollback target)
        part = self.staging_path(info.sha256)
        part.parent.mkdir(parents=True, exist_ok=True)
        if part.exists() and part.stat().st_size:
            logger.info("resuming the download of %s at byte %d of %d (left by an earlier run)",
                        info.short, part.stat().st_size, total)
        digest, hashed = hashlib.sha256(), -1
        failures = 0
        while True:
            if self.stop.is_set():
                raise DownloadError(f"download of {info.short} cancelled")
            offset = _part_offset(part, total)
            if hashed != offset:
                digest, hashed = _sha256_prefix(part) if offset else (hashlib.sha256(), 0)
            if offset == total:
                break
            hashed, error = self._fetch_from(info, part, offset, digest, progress)
            if error is None:
                if hashed == total:
                    break
                continue  # the controller ended this turn (fetch_stream_s): go on from here
            hashed, failures = self._back_off(info, part, offset, hashed, failures, error)
        return self._finish(info, part, digest, final)

    def _fetch_from(self, info: ArtifactInfo, part: Path, offset: int, digest,
                    progress: Callable[[int, int], None]) -> tuple[int, Exception | None]:
        """One attempt from `offset`: the bytes now written and hashed, and the error that ended it
        short (None when it made progress). Raises DownloadError when retrying cannot help."""
        try:
            hashed = self._attempt(info, part, offset, digest, progress)
        except FetchError as err:
            if not err.retryable:
                raise DownloadError(f"download of {info.short} refused at byte {offset}: {err}") from err
            return offset, err
        except DownloadError:
            raise
        except Exception as err:  # noqa: BLE001 - any stream error (grpc.RpcError, OSError) is retried
            return offset, err
        if hashed == info.size_bytes or hashed > offset:
            if hashed != info.size_bytes:
                logger.debug("download of %s: stream ended at byte %d of %d; resuming",
                             info.short, hashed, info.size_bytes)
            return hashed, None
        return hashed, FetchError(f"stream ended at byte {hashed} of {info.size_bytes}")

    def _back_off(self, info: ArtifactInfo, part: Path, offset: int, hashed: int, failures: int,
                  error: Exception) -> tuple[int, int]:
        """After an attempt from `offset` failed with `error`: count the failures in a row without
        progress (DownloadError at `attempts`), then wait out the backoff. Returns the bytes still
        hashed (-1: hash the prefix again) and the failures in a row."""
        total = info.size_bytes
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
        return hashed, failures

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


# ---- bundles (a model of several files), models sidecar, device fit, engine build ----

BUNDLED = frozenset(f for f, ext in EXTENSIONS.items() if ext == ".tar")


def bundled_manifest(info: ArtifactInfo):
    """The models manifest a bundle's files are checked against: the signed label `models.manifest`."""
    from edgefleet.models.errors import ModelError
    from edgefleet.models.manifest import labelled_manifest

    try:
        return labelled_manifest(info.labels, info.format)
    except ModelError as err:
        raise EngineError(f"{info.short}: {err}") from err


def installed_bundle(folder: Path, info: ArtifactInfo) -> Path | None:
    """The model file of a bundle unpacked into `folder` before, every file whole; None otherwise."""
    from edgefleet.models.bundle import installed

    return installed(folder, info.format, bundled_manifest(info))


def unpack_bundle(tar: Path, info: ArtifactInfo) -> Path:
    """Unpack a downloaded bundle beside it, each file checked against the signed models manifest;
    the tar goes either way (unpacked, or refused: the same signed bytes would be refused again)."""
    from edgefleet.models.bundle import unpack
    from edgefleet.models.errors import ModelError

    try:
        primary = unpack(tar, tar.parent, info.format, bundled_manifest(info))
    except ModelError as err:
        raise EngineError(f"{info.short}: a {info.format} bundle this agent cannot install: {err}") from err
    finally:
        tar.unlink(missing_ok=True)
    _fsync_dir(tar.parent)
    logger.info("unpacked %s: %s", info.short, primary)
    return primary

def check_device(info: ArtifactInfo, caps) -> None:
    """Raise EngineError unless this device (models.manifest.DeviceCaps) can run the artifact."""
    from edgefleet.models.errors import IncompatibleArtifact
    from edgefleet.models.manifest import check_compatible

    if info.format == "tensorrt-engine" and not (info.tensorrt_version and info.gpu_compute_capability):
        raise EngineError(f"engine {info.short} does not say which TensorRT version and GPU compute "
                          "capability it was built for; refused")
    try:
        # check_compatible reads only format, tensorrt_version and gpu_compute_capability, which ArtifactInfo
        # carries too; its signature names models' ArtifactManifest, the one type it is given elsewhere.
        check_compatible(info, caps, name=info.short)  # type: ignore[arg-type]
    except IncompatibleArtifact as err:
        raise EngineError(str(err)) from err


def install_sidecar(path: Path, info: ArtifactInfo) -> None:
    """Write the models manifest (`<file>.manifest.json`) that lets `models.load_detector` check and load it.

    ONNX: made from the file's own metadata (`manifest_for_onnx`), and its classes must be the signed
    ones. Engine: taken from the label `models.manifest` (the engine's manifest as `edgefleet model
    engine` wrote it), whose sha256 must be the artifact's. Bundle (OpenVINO IR, NCNN): the label's
    manifest, which its unpacked files were checked against. Ultralytics .pt files need none.
    """
    from edgefleet.models.errors import ModelError
    from edgefleet.models.manifest import MANIFEST_LABEL, manifest_for_onnx, parse_manifest, write_manifest

    try:
        if info.format == "onnx":
            manifest = manifest_for_onnx(path, file_sha256=info.sha256)  # checked as it was downloaded
            if info.class_names and tuple(info.class_names) != manifest.class_names:
                raise EngineError(f"{info.short}: the signed manifest lists {len(info.class_names)} classes "
                                  f"({', '.join(info.class_names[:3])}, ...); the model has "
                                  f"{len(manifest.class_names)} ({', '.join(manifest.class_names[:3])}, ...)")
        elif info.format in BUNDLED:
            manifest = bundled_manifest(info)  # unpack_bundle checked every file against it
        elif info.format == "tensorrt-engine":
            text = info.labels.get(MANIFEST_LABEL)
            if not text:
                raise EngineError(f"engine {info.short} comes without its models manifest (label "
                                  f"{MANIFEST_LABEL!r}); roll out its ONNX and let the device build")
            manifest = parse_manifest(text, source=f"label {MANIFEST_LABEL}")
            if manifest.file_sha256 != info.sha256:
                raise EngineError(f"{info.short}: its models manifest describes sha256 {manifest.file_sha256}")
        else:
            return
    except ModelError as err:
        raise EngineError(f"{info.short} is not a model this agent can run: {err}") from err
    write_manifest(manifest, path)


def needs_build(info: ArtifactInfo, caps) -> bool:
    """An ONNX on a device with TensorRT and a GPU runs as an engine built here; elsewhere onnxruntime runs it."""
    return info.format == "onnx" and bool(caps.tensorrt_version and caps.gpu_compute_capability)


def build_engine_cached(onnx_path: Path, info: ArtifactInfo) -> Path:
    """`<sha>/<stem>-<precision>.engine` beside the ONNX, built once per ONNX sha256 (the folder is its sha).

    UNVERIFIED here (no TensorRT, no GPU on the machines this was written on): it calls
    models.pipeline.cmd_engine, whose SDK part models.tensorrt_build marks unverified too. Exercise
    it on a device with TensorRT + pycuda: `python -c "from agent.artifacts import ArtifactInfo,
    build_engine_cached; from models.bundled import default_model; p = default_model();
    print(build_engine_cached(p, ArtifactInfo('0' * 64, 1, p.name, 'onnx', 'fp16')))"`.
    """
    from edgefleet.models.errors import ModelError
    from edgefleet.models.manifest import Precision, probe_device, verify_artifact
    from edgefleet.models.pipeline import cmd_engine

    precision: Precision = "fp32" if info.precision == "fp32" else "fp16"  # int8 needs calibration frames
    out = onnx_path.with_name(f"{onnx_path.stem}-{precision}.engine")
    if out.is_file():
        try:
            verify_artifact(out, device=probe_device())
            return out
        except ModelError as err:
            logger.warning("cached engine %s is unusable (%s); building again", out, err)
    try:
        return cmd_engine(onnx_path, out, precision).artifact
    except ModelError as err:
        raise EngineError(f"building a TensorRT engine from {info.short} failed: {err}") from err
