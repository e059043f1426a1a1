"""ONNX -> TensorRT engine, on the device that will run it (engines are tied to its GPU and TensorRT).

    build_engine(Path("yolov8n.onnx"), Path("yolov8n-int8.engine"), precision="int8",
                 calibration_images=Path("frames/"), calibration_cache=Path("yolov8n.calib"))

FP16 needs nothing else; INT8 calibrates with TensorRT's entropy calibrator (IInt8EntropyCalibrator2)
on a folder of frames from the deployment's own cameras, letterboxed exactly as inference does
(`models.yolo.letterbox_batch`), or reuses a calibration cache from an earlier build. The engine
is written atomically with its manifest (TensorRT version, GPU compute capability, precision,
input size and profile, classes and decode parameters copied from the ONNX's manifest).

The image batching, letterboxing, cache files, profile shapes and the engine's manifest are plain
code, unit tested. The SDK part (`build_engine` past its argument checks, `entropy_calibrator`,
`progress_monitor`) follows the TensorRT 10 Python API docs and is UNVERIFIED here (no GPU):
run `pytest -m gpu tests/unit/test_models_tensorrt.py` on a Jetson to exercise it. Note that
TensorRT deprecates implicit INT8 calibration from 10.1 on (explicit quantization replaces it);
it still works through 10.x.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import onnx

from .backends.tensorrt import import_tensorrt, trt_logger
from .errors import InvalidConfig, ModelError, ModelNotFound, UnsupportedModel
from .manifest import (
    ArtifactManifest,
    Precision,
    atomic_write_bytes,
    compute_capability,
    edgefleet_version,
    manifest_for_onnx,
    manifest_path,
    now_iso,
    read_manifest,
    sha256_file,
    verify_artifact,
    write_manifest,
)
from .yolo import letterbox_batch

logger = logging.getLogger(__name__)

BUILDER_VERSION = "1"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
Size = tuple[int, int]  # (width, height)


# ---- plain logic (no SDK) ----

def list_images(folder: Path, limit: int | None = None) -> list[Path]:
    """Image files in `folder` (not recursive), sorted by name, at most `limit`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelNotFound(f"calibration folder {folder} does not exist")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return images[:limit] if limit else images


class CalibrationBatches:
    """Full batches of letterboxed calibration images: (batch_size, 3, H, W) float32 RGB in 0..1.

    Unreadable images are skipped (and counted); a last partial batch is dropped, because
    TensorRT calibrates on exactly `batch_size` images per batch.
    """

    def __init__(self, images: list[Path], batch_size: int, input_size: Size):
        if batch_size < 1:
            raise InvalidConfig(f"calibration batch_size must be >= 1, got {batch_size}")
        if len(images) < batch_size:
            raise InvalidConfig(f"{len(images)} calibration image(s) cannot fill one batch of {batch_size}")
        width, height = input_size
        self.images, self.batch_size, self.input_size = list(images), batch_size, (width, height)
        self.total = len(self.images) // batch_size
        self.done = self.skipped = 0

    def __len__(self) -> int:
        """Batches the images would fill if all of them are readable."""
        return self.total

    def __iter__(self) -> Iterator[np.ndarray]:
        frames = []
        for path in self.images:
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is None:
                self.skipped += 1
                logger.warning("calibration: cannot read %s; skipped", path)
                continue
            frames.append(frame)
            if len(frames) == self.batch_size:
                batch, _ = letterbox_batch(frames, self.input_size)
                frames = []
                self.done += 1
                logger.info("calibration batch %d/%d (%d images)", self.done, self.total,
                            self.done * self.batch_size)
                yield np.ascontiguousarray(batch)
        if frames:
            logger.info("calibration: last %d image(s) do not fill a batch of %d; not used", len(frames),
                        self.batch_size)


class CalibrationFeed:
    """What the INT8 calibrator does, minus the GPU: hands out batches, reads and writes the cache.

    With a readable, non-empty cache TensorRT takes the scales from it and asks for no batches.
    """

    def __init__(self, batches: CalibrationBatches | None, cache: Path | None, batch_size: int):
        self.batches, self.cache, self.batch_size = batches, cache, batch_size
        self._iter = iter(batches) if batches is not None else iter(())

    def next_batch(self) -> np.ndarray | None:
        return next(self._iter, None)

    def read_cache(self) -> bytes | None:
        if self.cache is None or not self.cache.is_file() or self.cache.stat().st_size == 0:
            return None
        logger.info("calibration: using the cache %s (delete it to calibrate again)", self.cache)
        return self.cache.read_bytes()

    def write_cache(self, data: bytes) -> None:
        if self.cache is not None:
            atomic_write_bytes(self.cache, bytes(data))
            logger.info("calibration: wrote the cache %s (%d bytes)", self.cache, len(data))


@dataclasses.dataclass(frozen=True)
class Profile:
    """The optimisation profile: NCHW shapes TensorRT tunes for (opt) and accepts (min..max)."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    @property
    def dynamic_batch(self) -> bool:
        return self.min[0] != self.max[0]

    @property
    def dynamic_resolution(self) -> bool:
        return self.min[2:] != self.max[2:]


def onnx_input_shape(path: Path) -> tuple[str, tuple[int | None, ...]]:
    """The ONNX's image input: name and NCHW dims (None where symbolic)."""
    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    (inp,) = [i for i in model.graph.input if i.name not in initializers]
    dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in inp.type.tensor_type.shape.dim)
    return inp.name, dims


def make_profile(onnx_dims: tuple[int | None, ...], batch: tuple[int, int, int],
                 sizes: tuple[Size, Size, Size]) -> Profile:
    """Min/opt/max shapes from batch (min, opt, max) and sizes ((w, h) min, opt, max), checked
    against the ONNX input (fixed dims must be asked for exactly; sizes multiples of 32)."""
    if not batch[0] >= 1 or not batch[0] <= batch[1] <= batch[2]:
        raise InvalidConfig(f"batch must be 1 <= min <= opt <= max, got {batch}")
    for size in sizes:
        if any(v <= 0 or v % 32 for v in size):
            raise InvalidConfig(f"sizes must be positive multiples of 32, got {size[0]}x{size[1]}")
    for axis in (0, 1):
        if not sizes[0][axis] <= sizes[1][axis] <= sizes[2][axis]:
            raise InvalidConfig("sizes must be min <= opt <= max, got "
                                + ", ".join(f"{w}x{h}" for w, h in sizes))
    n, c, h, w = onnx_dims
    if n is not None and batch != (n, n, n):
        raise InvalidConfig(f"the ONNX input has a fixed batch of {n}; asked for {batch[0]}..{batch[2]} "
                            "(re-export it with a dynamic batch)")
    for dim, axis, name in ((h, 1, "height"), (w, 0, "width")):
        if dim is not None and any(s[axis] != dim for s in sizes):
            raise InvalidConfig(f"the ONNX input has a fixed {name} of {dim}; asked for "
                                + ", ".join(str(s[axis]) for s in sizes))
    channels = c or 3
    return Profile(*((b, channels, s[1], s[0]) for b, s in zip(batch, sizes)))


def engine_manifest(source: ArtifactManifest, source_sha256: str, engine: Path, *, precision: Precision,
                    profile: Profile, tensorrt_version: str, compute_capability: str) -> ArtifactManifest:
    """The engine's manifest: what it needs (TensorRT, GPU) and what it is, copied from its ONNX's."""
    return ArtifactManifest(
        format="tensorrt-engine", layout=source.layout, precision=precision,
        input_width=profile.opt[3], input_height=profile.opt[2], class_names=source.class_names,
        file_sha256=sha256_file(engine), file_size=engine.stat().st_size, created_at=now_iso(),
        producer=f"edgefleet.models.tensorrt_build {BUILDER_VERSION}",
        batch_range=(profile.min[0], profile.max[0]),
        resolution_range=(((profile.min[3], profile.min[2]), (profile.max[3], profile.max[2]))
                          if profile.dynamic_resolution else None),
        source_sha256=source_sha256, tensorrt_version=tensorrt_version,
        gpu_compute_capability=compute_capability, opset=source.opset, decode_params=source.decode_params,
        tool_versions={"tensorrt": tensorrt_version, "edgefleet": edgefleet_version()})


def source_manifest(onnx_path: Path) -> ArtifactManifest:
    """The ONNX's manifest: the one beside it (verified against the file), else made from its metadata."""
    if manifest_path(onnx_path).is_file():
        return verify_artifact(onnx_path, read_manifest(onnx_path))
    return manifest_for_onnx(onnx_path)


class BuildProgress:
    """Logs TensorRT's build phases (what the IProgressMonitor subclass hands on). Never cancels."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        self.steps[phase_name] = num_steps
        logger.info("build: %s%s (%d steps)", f"{parent_phase} / " if parent_phase else "", phase_name, num_steps)

    def step_complete(self, phase_name: str, step: int) -> bool:
        logger.debug("build: %s step %d/%d", phase_name, step + 1, self.steps.get(phase_name, 0))
        return True

    def phase_finish(self, phase_name: str) -> None:
        logger.debug("build: %s done", phase_name)


# ---- the SDK (UNVERIFIED: TensorRT 10 Python API, pycuda) ----

def entropy_calibrator(trt, cuda, feed: CalibrationFeed):
    """An `EntropyCalibrator` (trt.IInt8EntropyCalibrator2) over `feed`."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.device_input = None

        def get_batch_size(self):
            return feed.batch_size

        def get_batch(self, names):
            batch = feed.next_batch()
            if batch is None:
                return None
            if self.device_input is None:
                self.device_input = cuda.mem_alloc(batch.nbytes)
            cuda.memcpy_htod(self.device_input, batch)
            return [int(self.device_input)]

        def read_calibration_cache(self):
            return feed.read_cache()

        def write_calibration_cache(self, cache):
            feed.write_cache(bytes(cache))

    return EntropyCalibrator()


def progress_monitor(trt, progress: BuildProgress):
    class _Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            progress.phase_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name, step):
            return progress.step_complete(phase_name, step)

        def phase_finish(self, phase_name):
            progress.phase_finish(phase_name)

    return _Monitor()


def build_engine(onnx_path: Path, out_path: Path, precision: Precision = "fp16", *,
                 calibration_images: Path | None = None, calibration_cache: Path | None = None,
                 batch: tuple[int, int, int] = (1, 1, 1), sizes: tuple[Size, Size, Size] | None = None,
                 timing_cache: Path | None = None, workspace_mb: int = 1024, max_calibration_images: int = 512,
                 device: int = 0) -> ArtifactManifest:
    """Build `out_path` (+ manifest) from `onnx_path` on this machine's GPU; returns the engine's manifest.

    batch: (min, opt, max) images per call; sizes: ((w, h) min, opt, max), default the ONNX's
    input size for all three (a fixed-resolution engine). INT8 calibrates at the opt shape (TensorRT
    replaces a calibration profile's min and max by its opt), so in batches of the opt batch size:
    `calibration_images` (a folder) or an existing `calibration_cache` is required. The timing
    cache, when given, is loaded if present and saved after the build (later builds are faster).
    Arguments are checked before TensorRT is imported, so mistakes show on any machine.
    """
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if precision not in ("fp32", "fp16", "int8"):
        raise InvalidConfig(f"precision {precision!r} is not one of fp32, fp16, int8")
    source = source_manifest(onnx_path)
    sizes = sizes or (source.input_size,) * 3
    input_name, dims = onnx_input_shape(onnx_path)
    profile = make_profile(dims, batch, sizes)
    feed = None
    if precision == "int8":
        has_cache = calibration_cache is not None and Path(calibration_cache).is_file()
        if calibration_images is None and not has_cache:
            raise InvalidConfig("int8 needs calibration images (a folder of frames from the deployment's "
                                "cameras) or an existing calibration cache")
        batches = None  # images are read only if TensorRT asks (no cache, or one it cannot use)
        if calibration_images is not None:
            images = list_images(calibration_images, max_calibration_images)
            batches = CalibrationBatches(images, profile.opt[0], sizes[1])
        feed = CalibrationFeed(batches, Path(calibration_cache) if calibration_cache else None, profile.opt[0])

    trt, cuda = import_tensorrt()
    cuda.init()
    gpu = cuda.Device(device)
    ctx = gpu.retain_primary_context()
    ctx.push()
    try:
        serialized, cache_bytes = _build(trt, cuda, onnx_path, input_name, precision, profile, feed,
                                         timing_cache, workspace_mb)
        atomic_write_bytes(out_path, serialized)
        if timing_cache is not None and cache_bytes:
            atomic_write_bytes(Path(timing_cache), cache_bytes)
        capability = compute_capability(gpu.compute_capability())
    finally:
        ctx.pop()
        ctx.detach()
    manifest = engine_manifest(source, source.file_sha256, out_path, precision=precision, profile=profile,
                               tensorrt_version=trt.__version__, compute_capability=capability)
    write_manifest(manifest, out_path)
    logger.info("wrote %s (%s, %d bytes) for TensorRT %s on compute capability %s", out_path, precision,
                manifest.file_size, manifest.tensorrt_version, capability)
    return manifest


def _build(trt, cuda, onnx_path: Path, input_name: str, precision: Precision, profile: Profile,
           feed: CalibrationFeed | None, timing_cache: Path | None, workspace_mb: int) -> tuple[bytes, bytes]:
    log = trt_logger(trt)
    builder = trt.Builder(log)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):  # from the file: external weight files are found too
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UnsupportedModel(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = progress_monitor(trt, BuildProgress())
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape(input_name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(trt_profile)
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32: no TF32 convolutions on Ampere and later
    if precision in ("fp16", "int8"):
        if not builder.platform_has_fast_fp16:
            logger.warning("this GPU has no fast FP16; the engine may be slow")
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        assert feed is not None  # build_engine makes one for int8
        if not builder.platform_has_fast_int8:
            logger.warning("this GPU has no fast INT8; the engine may be slow")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = entropy_calibrator(trt, cuda, feed)
        config.set_calibration_profile(trt_profile)  # calibration runs at the profile's opt shape
    if timing_cache is not None:
        previous = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        config.set_timing_cache(config.create_timing_cache(previous), ignore_mismatch=False)
    logger.info("building %s engine from %s (profile min %s opt %s max %s); this takes minutes on a Jetson",
                precision, onnx_path.name, profile.min, profile.opt, profile.max)
    start = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError(f"TensorRT failed to build an engine from {onnx_path}; see the TensorRT messages above")
    logger.info("built in %.0f s", time.monotonic() - start)
    cache_bytes = bytes(memoryview(config.get_timing_cache().serialize())) if timing_cache is not None else b""
    return bytes(memoryview(serialized)), cache_bytes
