"""OpenVINO backend: Intel's runtime, fastest on x86 CPUs (and on Intel GPUs/NPUs where present).

Loads an OpenVINO IR (`.xml` with its `.bin` beside it, as `models.openvino_quantize` writes
for INT8) or an ONNX file directly. Pre- and post-processing are the onnxruntime backend's
(`LetterboxDetector`, `read_layout`): the same frames give the same boxes, within float noise.

The model's metadata (ONNX `metadata_props`) is what `read_layout` decodes by: OpenVINO keeps it
in the model's rt_info under "framework", and `ov.save_model` writes it into the IR, so an IR made
from one of our ONNX files decodes as that file does.

The network's height and width are fixed at `input_size` before compiling (the batch stays free):
OpenVINO's CPU plugin compiles a static shape once and runs it faster than a dynamic one. `rect`
keeps them dynamic instead, at that cost.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..base import DEFAULT_CONFIDENCE_THRESHOLD, DEFAULT_IOU_THRESHOLD, InputSize
from ..errors import BackendUnavailable, InvalidConfig, ModelError, ModelNotFound, UnsupportedModel
from ..letterbox import LetterboxDetector, head_decoder
from ..manifest import manifest_path, verify_artifact
from .onnxruntime import read_layout

logger = logging.getLogger(__name__)

BACKEND_KEY: Final = "openvino"
SUFFIXES = (".xml", ".onnx")
MANIFEST_FORMATS = ("onnx", "openvino-ir")
"""Manifest formats this backend runs (an IR's manifest describes its .xml)."""
VIRTUAL_DEVICES = frozenset({"AUTO", "MULTI", "HETERO", "BATCH"})
"""OpenVINO's devices that dispatch to real ones ("AUTO:GPU,CPU")."""
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}


class OpenVinoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["openvino"] = BACKEND_KEY
    model: Path
    """An OpenVINO IR (.xml, its .bin beside it) or an ONNX file."""
    input_size: InputSize | None = None
    """(width, height), multiples of 32; None: the size stored in the model (416x416 for the bundled one)."""
    rect: bool = False
    """As the onnxruntime backend's: each batch letterboxed into its smallest rectangle. Keeps the
    compiled model's height and width dynamic, which OpenVINO's CPU plugin runs more slowly."""
    confidence_threshold: float = Field(DEFAULT_CONFIDENCE_THRESHOLD, ge=0.0, le=1.0)
    iou_threshold: float = Field(DEFAULT_IOU_THRESHOLD, ge=0.0, le=1.0)
    device: str = "CPU"
    """OpenVINO device name: "CPU", "GPU", "NPU", "GPU.1", "AUTO"...; must be present here."""
    performance_hint: Literal["latency", "throughput"] = "latency"
    """latency: one call at a time as fast as possible (the agent's loop); throughput: OpenVINO
    splits the cores into streams for many calls in flight, slower per call."""
    threads: int | None = Field(None, ge=1)
    """inference_num_threads; None: OpenVINO's choice (the physical cores). Set it when several
    detectors or the video decoder share a small CPU."""
    inference_precision: Literal["f32", "bf16", "f16"] = "f32"
    """Precision of the float layers (inference_precision_hint). f32: the ONNX model's own numbers
    (scores within 1e-3 of onnxruntime's). OpenVINO's CPU default is bf16 on CPUs with AMX or
    AVX512-BF16, faster there (about 4x the f32 rate on a 2-core Xeon with AMX) but scores move by
    about 1e-2; ask for it here. An INT8 IR's
    quantized layers run in int8 whatever this says; an NPU runs f16."""


def _dims(partial_shape: Any) -> list[int | str]:
    """An OpenVINO partial shape as read_layout takes it: ints where static, a name where dynamic."""
    return [d.get_length() if d.is_static else "?" for d in partial_shape]


def model_metadata(model: Any) -> dict[str, str]:
    """The ONNX metadata_props OpenVINO kept in the model's rt_info (under "framework"), as strings."""
    if not model.has_rt_info(["framework"]):
        return {}
    keys = model.get_rt_info(["framework"]).astype(dict)
    return {str(key): model.get_rt_info(["framework", key]).astype(str) for key in keys}


def check_manifest(model: Path) -> None:
    """Verify `model` against the manifest beside it, when there is one; see the onnxruntime backend's."""
    if not manifest_path(model).is_file():
        logger.info("%s has no manifest beside it; loading it unchecked", model)
        return
    manifest = verify_artifact(model)
    if manifest.format not in MANIFEST_FORMATS:
        raise UnsupportedModel(f"{model}: its manifest says format {manifest.format!r}; "
                               f"the openvino backend runs {list(MANIFEST_FORMATS)}")


def check_device(device: str, available: list[str]) -> None:
    """A device name must be one OpenVINO found here; AUTO, MULTI and HETERO choose among those."""
    if device.split(":")[0] in VIRTUAL_DEVICES or device in available:
        return
    raise BackendUnavailable(f"OpenVINO device {device!r} is not present here; this machine has {available}")


def compile_properties(config: OpenVinoConfig) -> dict[str, Any]:
    """compile_model's properties for a config."""
    properties: dict[str, Any] = {"PERFORMANCE_HINT": HINTS[config.performance_hint]}
    if not config.device.startswith("NPU"):  # an NPU runs f16 and refuses the property
        properties["INFERENCE_PRECISION_HINT"] = config.inference_precision
    if config.threads:
        properties["INFERENCE_NUM_THREADS"] = config.threads
    return properties


def _import_openvino() -> Any:
    """The openvino module (no type information: imported by name, typed Any)."""
    try:
        return importlib.import_module("openvino")
    except ImportError as err:
        raise BackendUnavailable("backend 'openvino' needs the openvino package: pip install 'edgefleet[cpu]' "
                                 f"({err})") from err


class OpenVinoDetector(LetterboxDetector):
    def __init__(self, config: OpenVinoConfig):
        ov = _import_openvino()
        if not config.model.is_file():
            raise ModelNotFound(f"model {config.model} does not exist")
        if config.model.suffix.lower() not in SUFFIXES:
            raise UnsupportedModel(f"{config.model}: the openvino backend reads {' or '.join(SUFFIXES)} files")
        if config.model.suffix.lower() == ".xml" and not config.model.with_suffix(".bin").is_file():
            raise ModelNotFound(f"{config.model} has no weights file {config.model.with_suffix('.bin').name} beside it")
        check_manifest(config.model)
        core = ov.Core()
        check_device(config.device, core.available_devices)
        try:
            model = core.read_model(str(config.model))
        except Exception as err:  # OpenVINO raises RuntimeError with its own text for bad files
            raise UnsupportedModel(f"openvino cannot read {config.model}: {err}") from err
        self._set_layout(model, config)
        if not self.layout.fixed_size and not self.rect:
            model.reshape({model.inputs[0]: ov.PartialShape([-1, 3, self.input_size[1], self.input_size[0]])})
        try:
            self.compiled = core.compile_model(model, config.device, compile_properties(config))
        except Exception as err:
            raise UnsupportedModel(f"openvino cannot compile {config.model} for {config.device}: {err}") from err
        self.request = self.compiled.create_infer_request()
        self.device = config.device
        self.model_path = config.model
        self.last_inference_ms = 0.0
        try:
            self.warm_up()
        except ValueError as err:  # a decoder refusing the real output shape
            raise UnsupportedModel(f"{config.model}: {err}") from err
        logger.info("openvino: %s (%s head) at %dx%d on %s, hint %s (warm-up %.1f ms)", config.model.name,
                    self.layout.head, *self.input_size, config.device, config.performance_hint,
                    self.last_inference_ms)

    def _set_layout(self, model: Any, config: OpenVinoConfig) -> None:
        """Names, head decoder, input size and batch limits from the model, as the onnxruntime backend does."""
        self.layout = read_layout(model_metadata(model), _dims(model.inputs[0].get_partial_shape()),
                                  [_dims(o.get_partial_shape()) for o in model.outputs], str(config.model))
        self.names = self.layout.names
        self.use_head(*head_decoder(self.layout.head, self.layout.anchors, self.layout.masks))
        self.max_batch, self.pad_batch = self.layout.max_batch, self.layout.pad_batch
        self.input_size = config.input_size or self.layout.input_size
        if self.layout.fixed_size and self.input_size != self.layout.input_size:
            raise InvalidConfig(f"input_size {self.input_size} does not fit {config.model}: it was exported "
                                f"for {self.layout.input_size} only (width, height)")
        self.rect = config.rect and not self.layout.fixed_size
        self.confidence_threshold = config.confidence_threshold
        self.iou_threshold = config.iou_threshold

    def _run(self, tensor: np.ndarray) -> list[np.ndarray]:
        if self.request is None:
            raise ModelError("this detector is closed")
        results = self.request.infer({0: tensor})
        # Copies: the request reuses its output buffers on the next call, and finish() may run after it.
        return [np.array(results[output]) for output in self.compiled.outputs]

    def close(self) -> None:
        self.request = None
        self.compiled = None


Config = OpenVinoConfig
DetectorClass = OpenVinoDetector
