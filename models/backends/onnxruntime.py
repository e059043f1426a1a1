"""ONNX Runtime backend: runs anywhere; picks the best execution provider this machine has.

Reads the model's layout from the file (`read_layout`) and decodes accordingly:

- "darknet": models made by `models.darknet` (metadata format "darknet-yolo"): one raw tensor
  per [yolo] head; class names, anchors, masks and the default input size from the metadata.
- "ultralytics": Ultralytics ONNX exports of anchor-free detect heads (YOLOv5u/v8/11),
  one output (N, 4 + nc, A); decoded by `decode_ultralytics`, then our NMS.
- "end2end": Ultralytics exports whose graph selects the boxes itself, one output (N, K, 6):
  `nms=True` exports and NMS-free YOLOv10/YOLO26 heads; `decode_end2end`, no NMS after it.

Ultralytics exports are recognised by their metadata_props (`names` a Python dict literal,
`imgsz`, `stride`, `task`, `end2end`, `args`) and told apart by output shape. Anything else
fails at start with `UnsupportedModel` naming the output shapes.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..base import DEFAULT_CONFIDENCE_THRESHOLD, DEFAULT_IOU_THRESHOLD, InputSize
from ..darknet import FORMAT
from ..errors import BackendUnavailable, InvalidConfig, ModelError, ModelNotFound, UnsupportedModel
from ..letterbox import LetterboxDetector, head_decoder
from ..manifest import DeviceCaps, manifest_path, verify_artifact
from ..metadata import ultralytics_metadata

logger = logging.getLogger(__name__)

BACKEND_KEY: Final = "onnxruntime"
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


class OnnxRuntimeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["onnxruntime"] = BACKEND_KEY
    model: Path
    input_size: InputSize | None = None
    """(width, height), multiples of 32; None: the size stored in the model (416x416 for the
    bundled one). A model exported with a fixed input shape accepts only that size.
    Larger finds smaller objects and costs time roughly in proportion to the pixels."""
    rect: bool = False
    """Letterbox each batch into the smallest rectangle of multiples of 32 that holds its frames
    at the scale `input_size` gives them (models.yolo.rect_size), not into all of `input_size`:
    4:3 video into 416x416 runs at 416x320, a quarter fewer pixels, at the same scale. Less
    padding changes what cells near it see, so scores move a little and some weak boxes differ
    (tests/integration/test_detector_bundled.py). Needs a model with a dynamic input size;
    ignored by one exported for a fixed size."""
    confidence_threshold: float = Field(DEFAULT_CONFIDENCE_THRESHOLD, ge=0.0, le=1.0)
    iou_threshold: float = Field(DEFAULT_IOU_THRESHOLD, ge=0.0, le=1.0)
    intra_op_threads: int | None = Field(None, ge=1)
    """Threads for one inference; None: onnxruntime's default (one per physical core).
    Set it when several detectors share a machine so they do not oversubscribe it."""
    spin_wait: bool = True
    """Let idle intra-op threads spin between inferences (onnxruntime's default): lowest latency
    when the detector owns the cores. Off: they sleep, leaving the cores to video decoding and
    the rest of the loop when those share a small CPU (a Raspberry Pi, a 2-core box)."""
    providers: list[str] | None = None
    """Execution providers in order of preference; None: TensorRT, CUDA, CPU, of those present."""
    io_binding: bool | None = None
    """Bind inputs and outputs to the execution provider's device (ONNX Runtime IO binding):
    outputs stay in GPU memory until one copy back, instead of per-output allocations and
    copies inside run(). None: on when a GPU provider (TensorRT, CUDA) runs the model, where it
    helps; on the CPU it only adds bookkeeping."""


def choose_providers(requested: list[str] | None, available: list[str]) -> list[str]:
    """The providers to ask for: `requested` (all must exist), else the preferred ones present."""
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise BackendUnavailable(
                f"execution provider(s) {missing} not available; this onnxruntime has {available}")
        return list(requested)
    return [p for p in PREFERRED_PROVIDERS if p in available] or list(available)


Head = Literal["darknet", "ultralytics", "end2end"]


@dataclass(frozen=True)
class ModelLayout:
    """What a model file's outputs mean and which inputs it takes, read once at load."""

    head: Head
    names: list[str]
    input_size: tuple[int, int]
    """(width, height) stored in the model: the default, or the only size when `fixed_size`."""
    fixed_size: bool = False
    """The graph was exported with a fixed height and width."""
    max_batch: int | None = None
    """Frames per session run; None: any number. Set by a fixed batch dimension, or by an
    Ultralytics `nms=True` export, whose NMS loop was unrolled for its export batch size."""
    pad_batch: bool = False
    """The batch dimension is fixed: a shorter run is padded up to `max_batch`."""
    anchors: np.ndarray | None = None
    masks: list[list[int]] | None = None


def read_layout(meta: dict[str, str], input_shape: list, output_shapes: list[list],
                source: str = "model") -> ModelLayout:
    """Decide how to decode a model from its metadata and its input/output shapes (ints or names)."""
    batch_dim, _, height_dim, width_dim = (list(input_shape) + [None] * 4)[:4]
    fixed_size = isinstance(height_dim, int) and isinstance(width_dim, int)
    pad_batch = isinstance(batch_dim, int)
    shapes = ", ".join(str(list(s)) for s in output_shapes)
    if meta.get("format") == FORMAT:
        return ModelLayout("darknet", json.loads(meta["names"]),
                           (int(meta["input_width"]), int(meta["input_height"])), fixed_size,
                           batch_dim if pad_batch else None, pad_batch,
                           np.asarray(json.loads(meta["anchors"]), dtype=np.float32), json.loads(meta["masks"]))
    info = ultralytics_metadata(meta, source)
    if info is None:
        raise UnsupportedModel(
            f"{source}: model format {meta.get('format')!r} is not supported (expected {FORMAT!r} from "
            f"models.darknet, or an Ultralytics export's metadata); its outputs are {shapes}")
    if info["task"] != "detect":
        raise UnsupportedModel(f"{source}: Ultralytics task {info['task']!r} is not supported, only 'detect'")
    nc = len(info["names"])
    dims = list(output_shapes[0]) if len(output_shapes) == 1 else []
    free = [not isinstance(d, int) for d in dims]  # named (dynamic) dimensions fit any size
    claims_end2end = info["end2end"] or bool(info["args"].get("nms"))
    head: Head | None
    if len(dims) != 3:
        head = None
    elif claims_end2end:  # the metadata decides; the shape must not contradict it
        head = "end2end" if free[2] or dims[2] == 6 else None
    elif free[1] or dims[1] == 4 + nc:
        head = "ultralytics"
    else:  # an end-to-end head from an exporter that did not say so
        head = "end2end" if dims[2] == 6 else None
    if head is None:
        raise UnsupportedModel(
            f"{source}: Ultralytics output {shapes} (end2end={info['end2end']}, nms={info['args'].get('nms')}) "
            f"is neither [N, 4 + {nc} classes, anchors] nor [N, K, 6] (x1, y1, x2, y2, score, class)")
    max_batch = batch_dim if pad_batch else None
    if info["args"].get("nms") and not pad_batch:  # the NMS loop ran `batch` times at export
        max_batch = info["batch"]
    height, width = (height_dim, width_dim) if fixed_size else info["imgsz"]  # a fixed graph knows best
    return ModelLayout(head, info["names"], (width, height), fixed_size, max_batch, pad_batch)


def check_manifest(model: Path, device: DeviceCaps) -> None:
    """Verify `model` against the manifest beside it, when there is one (every artifact the
    pipeline writes has one): a file that was truncated, replaced or made for another runtime
    fails here, before onnxruntime reads it. A file without a manifest loads unchecked."""
    if not manifest_path(model).is_file():
        logger.info("%s has no manifest beside it; loading it unchecked", model)
        return
    manifest = verify_artifact(model, device=device)
    if manifest.format != "onnx":
        raise UnsupportedModel(f"{model}: its manifest says format {manifest.format!r}; "
                               "the onnxruntime backend runs 'onnx' artifacts")


class OnnxRuntimeDetector(LetterboxDetector):
    def __init__(self, config: OnnxRuntimeConfig):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise BackendUnavailable("backend 'onnxruntime' needs the onnxruntime package installed") from err
        if not config.model.is_file():
            raise ModelNotFound(f"model {config.model} does not exist")
        available = ort.get_available_providers()
        check_manifest(config.model, DeviceCaps(onnxruntime_providers=tuple(available)))
        options = ort.SessionOptions()
        if config.intra_op_threads:
            options.intra_op_num_threads = config.intra_op_threads
        if not config.spin_wait:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = choose_providers(config.providers, available)
        try:
            self.session = ort.InferenceSession(str(config.model), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own untyped errors for bad files
            raise UnsupportedModel(f"onnxruntime cannot load {config.model}: {err}") from err
        meta = self.session.get_modelmeta().custom_metadata_map
        self.layout = read_layout(meta, self.session.get_inputs()[0].shape,
                                  [o.shape for o in self.session.get_outputs()], str(config.model))
        self.names = self.layout.names
        self.anchors, self.masks = self.layout.anchors, self.layout.masks
        self.use_head(*head_decoder(self.layout.head, self.anchors, self.masks))
        self.max_batch, self.pad_batch = self.layout.max_batch, self.layout.pad_batch
        width, height = config.input_size or self.layout.input_size
        self.input_size = (width, height)
        if self.layout.fixed_size and self.input_size != self.layout.input_size:
            raise InvalidConfig(f"input_size {self.input_size} does not fit {config.model}: it was exported "
                                f"for {self.layout.input_size} only (width, height)")
        self.rect = config.rect and not self.layout.fixed_size
        self.confidence_threshold = config.confidence_threshold
        self.iou_threshold = config.iou_threshold
        self.input_name = self.session.get_inputs()[0].name
        self.providers = self.session.get_providers()
        self.output_names = [o.name for o in self.session.get_outputs()]
        on_gpu = self.providers[0] in GPU_PROVIDERS
        self.io_binding = on_gpu if config.io_binding is None else config.io_binding
        self._binding_device = "cuda" if on_gpu else "cpu"
        self.model_path = config.model
        self.last_inference_ms = 0.0
        try:
            self.warm_up()
        except ValueError as err:  # a decoder refusing the real output shape (named dimensions pass read_layout)
            raise UnsupportedModel(f"{config.model}: {err}") from err
        logger.info("onnxruntime: %s (%s head) at %dx%d on %s (warm-up %.1f ms)", config.model.name,
                    self.layout.head, *self.input_size, self.providers[0], self.last_inference_ms)

    def _run(self, tensor: np.ndarray) -> list[np.ndarray]:
        if self.session is None:
            raise ModelError("this detector is closed")
        if not self.io_binding:
            return self.session.run(None, {self.input_name: tensor})
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, tensor)  # one host -> device copy
        for name in self.output_names:
            binding.bind_output(name, self._binding_device)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def close(self) -> None:
        self.session = None


Config = OnnxRuntimeConfig
DetectorClass = OnnxRuntimeDetector
