"""TensorRT backend: runs a serialized engine built on this device (see `models.tensorrt_build`).

The engine's manifest (`<engine>.manifest.json`) says its layout, classes, input size and the
TensorRT version and GPU it was built for; it is checked against this device before the engine
is deserialized, so a wrong engine fails with what it needs and what the device has.

Everything that does not need the SDK (the I/O tensor table, dynamic-shape resolution, the
severity mapping of TensorRT's logger, decoder choice) is plain code in this module and unit
tested. The SDK calls (`TensorRTDetector`, `import_tensorrt`, `trt_logger`) follow the
TensorRT 10 Python API (name-based I/O tensors, `execute_async_v3`) and pycuda; they are
UNVERIFIED here (no GPU where this was written): run `pytest -m gpu tests/unit/test_models_tensorrt.py`
on a Jetson to exercise them.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..base import DEFAULT_CONFIDENCE_THRESHOLD, DEFAULT_IOU_THRESHOLD, InputSize
from ..errors import BackendUnavailable, IncompatibleArtifact, ModelError, ModelNotFound, UnsupportedModel
from ..letterbox import Decoder, LetterboxDetector, head_decoder
from ..manifest import (
    ArtifactManifest,
    DeviceCaps,
    compute_capability,
    read_manifest,
    verify_artifact,
)

logger = logging.getLogger(__name__)
trt_log = logging.getLogger(__name__ + ".native")
"""TensorRT's own messages (builder, runtime, parser) arrive here."""

BACKEND_KEY: Final = "tensorrt"
SDK_MISSING = ("tensorrt/pycuda are not installed; on Jetson use JetPack's python3-libnvinfer and create "
               "the venv with --system-site-packages")


class TensorRTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["tensorrt"] = BACKEND_KEY
    model: Path
    """A serialized engine with its manifest beside it (`edgefleet model engine` writes both)."""
    input_size: InputSize | None = None
    """(width, height); None: the manifest's size. Must lie inside the engine's optimisation profile."""
    confidence_threshold: float = Field(DEFAULT_CONFIDENCE_THRESHOLD, ge=0.0, le=1.0)
    iou_threshold: float = Field(DEFAULT_IOU_THRESHOLD, ge=0.0, le=1.0)
    device: int = Field(0, ge=0)
    """CUDA device index (0 on a Jetson)."""


# ---- plain logic (no SDK) ----

SEVERITY_LEVELS = {0: logging.CRITICAL, 1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO, 4: logging.DEBUG}
"""TensorRT ILogger.Severity (INTERNAL_ERROR=0, ERROR, WARNING, INFO, VERBOSE=4) -> logging level."""


def severity_level(severity: Any) -> int:
    """The `logging` level of a TensorRT severity (the enum or its int); unknown values log as WARNING."""
    try:
        return SEVERITY_LEVELS.get(int(severity), logging.WARNING)
    except (TypeError, ValueError):
        return logging.WARNING


class LoggingBridge:
    """What the TensorRT `ILogger` subclass does with each message: hand it to `logging`."""

    def __init__(self, target: logging.Logger = trt_log):
        self.target = target

    def log(self, severity: Any, msg: str) -> None:
        level = severity_level(severity)
        if self.target.isEnabledFor(level):
            self.target.log(level, "%s", msg)


TRT_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32,
              "INT64": np.int64, "BOOL": np.bool_, "UINT8": np.uint8}


@dataclass(frozen=True)
class TensorSpec:
    """One engine I/O tensor. shape: -1 for a dynamic dim; profile: (min, opt, max) shapes of an input."""

    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: np.dtype
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None

    def profile_range(self, dim: int) -> tuple[int, int]:
        """(min, max) of dimension `dim` in the optimisation profile (a dynamic input has one)."""
        if self.profile is None:
            raise UnsupportedModel(f"engine tensor {self.name!r} has no optimisation profile")
        return self.profile[0][dim], self.profile[2][dim]


def tensor_specs(rows: list[tuple[str, bool, tuple[int, ...], str, Any]]) -> tuple[TensorSpec, list[TensorSpec]]:
    """(input, outputs) from rows of (name, is_input, shape, TensorRT dtype name, profile or None)."""
    specs = []
    for name, is_input, shape, dtype_name, profile in rows:
        if dtype_name not in TRT_DTYPES:
            raise UnsupportedModel(f"engine tensor {name!r} has TensorRT type {dtype_name}; supported: "
                                   f"{sorted(TRT_DTYPES)}")
        shape = tuple(int(d) for d in shape)
        if profile is not None:
            profile = tuple(tuple(int(d) for d in p) for p in profile)
        specs.append(TensorSpec(name, bool(is_input), shape, np.dtype(TRT_DTYPES[dtype_name]), profile))
    inputs = [s for s in specs if s.is_input]
    outputs = [s for s in specs if not s.is_input]
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise UnsupportedModel(f"engine must have one NCHW image input, has {[(s.name, s.shape) for s in inputs]}")
    if not outputs:
        raise UnsupportedModel("engine has no outputs")
    if -1 in inputs[0].shape and inputs[0].profile is None:
        raise UnsupportedModel(f"engine input {inputs[0].name!r} is dynamic {inputs[0].shape} but has no "
                               "optimisation profile")
    return inputs[0], outputs


_DIM_NAMES = ("batch", "channels", "height", "width")


def resolve_input_shape(spec: TensorSpec, batch: int, input_size: tuple[int, int]) -> tuple[int, ...]:
    """The concrete NCHW shape for `batch` frames at `input_size` (width, height), checked against the engine."""
    wanted = (batch, 3, input_size[1], input_size[0])
    for i, (dim, value) in enumerate(zip(spec.shape, wanted)):
        if dim == -1:
            low, high = spec.profile_range(i)
            if not low <= value <= high:
                raise UnsupportedModel(f"engine input {spec.name!r}: {_DIM_NAMES[i]} {value} is outside the "
                                       f"engine's optimisation profile {low}..{high}")
        elif dim != value:
            raise UnsupportedModel(f"engine input {spec.name!r}: {_DIM_NAMES[i]} is fixed at {dim}, "
                                   f"asked for {value}")
    return wanted


def max_batch(spec: TensorSpec) -> int:
    """The most frames one inference call takes."""
    return spec.profile_range(0)[1] if spec.shape[0] == -1 else spec.shape[0]


def volume(shape: tuple[int, ...]) -> int:
    if any(d < 0 for d in shape):
        raise UnsupportedModel(f"shape {shape} is not resolved (a -1 is left)")
    return math.prod(shape)


LAYOUT_HEADS = {"darknet-yolo": "darknet", "ultralytics": "ultralytics", "end2end": "end2end"}
"""A manifest's layout -> the head `models.letterbox.head_decoder` decodes."""


def decoder_for(manifest: ArtifactManifest) -> tuple[Decoder, bool]:
    """(decode function, whether NMS follows) for the manifest's layout (`models.letterbox.head_decoder`).

    Each returns per image (xyxy in input pixels, score, class_id). A layout without a decoder is
    refused with `UnsupportedModel` (rather than failing on the first frame).
    """
    if manifest.layout not in LAYOUT_HEADS:
        raise UnsupportedModel(f"layout {manifest.layout!r} has no decoder; known: {sorted(LAYOUT_HEADS)}")
    if manifest.layout == "darknet-yolo":
        params = manifest.decode_params
        return head_decoder("darknet", np.asarray(params["anchors"], dtype=np.float32), params["masks"])
    return head_decoder(LAYOUT_HEADS[manifest.layout])


# ---- the SDK (UNVERIFIED: written against the TensorRT 10 Python API docs, no GPU here) ----

def import_tensorrt():
    """(tensorrt, pycuda.driver), or `BackendUnavailable` saying how to get them."""
    try:
        import pycuda.driver as cuda
        import tensorrt as trt
    except ImportError as err:
        raise BackendUnavailable(f"{SDK_MISSING} ({err})") from err
    return trt, cuda


_TRT_LOGGER = None


def trt_logger(trt):
    """The process's one TensorRT ILogger, routing into `logging` (TensorRT wants a single logger)."""
    global _TRT_LOGGER
    if _TRT_LOGGER is None:
        class _Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.bridge = LoggingBridge()

            def log(self, severity, msg):
                self.bridge.log(severity, msg)

        _TRT_LOGGER = _Logger()
    return _TRT_LOGGER


def read_io_rows(engine, trt) -> list[tuple[str, bool, tuple[int, ...], str, Any]]:
    """The engine's I/O tensors as rows for `tensor_specs` (TensorRT 10 name-based API)."""
    rows = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        shape = tuple(engine.get_tensor_shape(name))
        profile = engine.get_tensor_profile_shape(name, 0) if is_input and -1 in shape else None
        rows.append((name, is_input, shape, engine.get_tensor_dtype(name).name, profile))
    return rows


class TensorRTDetector(LetterboxDetector):
    """UNVERIFIED (TensorRT 10 + pycuda): engine, pinned host + device buffers, one stream, execute_async_v3.

    Letterboxing, decoding, NMS, scaling and the staged prepare/run/finish calls are
    `LetterboxDetector`'s; this class loads the engine and runs it (`_run`)."""

    def __init__(self, config: TensorRTConfig):
        trt, cuda = import_tensorrt()
        self._cuda = cuda
        if not config.model.is_file():
            raise ModelNotFound(f"engine {config.model} does not exist")
        manifest = read_manifest(config.model)
        if manifest.format != "tensorrt-engine":
            raise UnsupportedModel(f"{config.model}: manifest format {manifest.format!r}, expected "
                                   "'tensorrt-engine'")
        cuda.init()
        gpu = cuda.Device(config.device)
        self._ctx = gpu.retain_primary_context()
        self._ctx.push()
        try:
            caps = DeviceCaps(trt.__version__, compute_capability(gpu.compute_capability()))
            verify_artifact(config.model, manifest, caps)
            self._load(trt, cuda, config, manifest, caps)
        except BaseException:
            self._ctx.pop()
            self._ctx.detach()
            raise
        self._ctx.pop()
        self.last_inference_ms = 0.0
        self.warm_up()
        logger.info("tensorrt: %s (%s) at %dx%d, batch <= %d on GPU %d (warm-up %.1f ms)", config.model.name,
                    manifest.precision, *self.input_size, self.max_batch, config.device, self.last_inference_ms)

    def _load(self, trt, cuda, config: TensorRTConfig, manifest: ArtifactManifest, caps: DeviceCaps) -> None:
        runtime = trt.Runtime(trt_logger(trt))
        self.engine = runtime.deserialize_cuda_engine(config.model.read_bytes())
        if self.engine is None:
            raise IncompatibleArtifact(
                f"TensorRT {caps.tensorrt_version} could not deserialize {config.model}: it was built for "
                f"another TensorRT version or GPU (manifest: TensorRT {manifest.tensorrt_version}, compute "
                f"capability {manifest.gpu_compute_capability}); rebuild it on this device")
        self.context = self.engine.create_execution_context()
        self.input_spec, self.output_specs = tensor_specs(read_io_rows(self.engine, trt))
        self.names = list(manifest.class_names)
        width, height = config.input_size or manifest.input_size
        self.input_size = (width, height)
        self.confidence_threshold = config.confidence_threshold
        self.iou_threshold = config.iou_threshold
        self.use_head(*decoder_for(manifest))
        self.max_batch = max_batch(self.input_spec)
        self.pad_batch = self.input_spec.shape[0] != -1  # a fixed batch dimension takes that many frames only
        # Buffers for the largest batch at our input size; output shapes follow from the input's.
        largest = resolve_input_shape(self.input_spec, self.max_batch, self.input_size)
        self._set_input_shape(largest)
        self._host, self._device = {}, {}
        for spec in (self.input_spec, *self.output_specs):
            shape = largest if spec.is_input else tuple(self.context.get_tensor_shape(spec.name))
            self._host[spec.name] = cuda.pagelocked_empty(volume(shape), spec.dtype)
            self._device[spec.name] = cuda.mem_alloc(self._host[spec.name].nbytes)
            self.context.set_tensor_address(spec.name, int(self._device[spec.name]))
        self.stream = cuda.Stream()

    def _set_input_shape(self, shape: tuple[int, ...]) -> None:
        if not self.context.set_input_shape(self.input_spec.name, tuple(shape)):
            raise UnsupportedModel(f"TensorRT refused input shape {tuple(shape)} for {self.input_spec.name!r}")

    def _run(self, tensor: np.ndarray) -> list[np.ndarray]:
        """One engine run on at most `max_batch` frames, host -> device -> host copies included."""
        if self.context is None:
            raise ModelError("this detector is closed")
        height, width = tensor.shape[2:]
        shape = resolve_input_shape(self.input_spec, len(tensor), (width, height))
        cuda, name = self._cuda, self.input_spec.name
        self._ctx.push()
        try:
            self._set_input_shape(shape)
            host_in = self._host[name][:tensor.size]
            np.copyto(host_in, tensor.ravel(), casting="same_kind")
            cuda.memcpy_htod_async(self._device[name], host_in, self.stream)
            if not self.context.execute_async_v3(self.stream.handle):
                raise ModelError("TensorRT execute_async_v3 failed; see the TensorRT messages logged before")
            views = []
            for spec in self.output_specs:
                out_shape = tuple(self.context.get_tensor_shape(spec.name))
                view = self._host[spec.name][:volume(out_shape)]
                cuda.memcpy_dtoh_async(view, self._device[spec.name], self.stream)
                views.append((view, out_shape))
            self.stream.synchronize()
        finally:
            self._ctx.pop()
        return [view.reshape(out_shape).astype(np.float32, copy=True) for view, out_shape in views]

    def close(self) -> None:
        if getattr(self, "context", None) is None:
            return
        self._ctx.push()
        try:
            for mem in self._device.values():
                mem.free()
        finally:
            self._ctx.pop()
        self._device, self._host = {}, {}
        self.context = self.engine = None
        self._ctx.detach()


Config = TensorRTConfig
DetectorClass = TensorRTDetector
