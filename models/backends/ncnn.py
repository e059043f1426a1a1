"""NCNN backend: Tencent's CPU-first runtime (ARM NEON, x86 AVX), Vulkan GPUs where present.

Runs the param/bin pair `models.ncnn_convert.convert` makes from an ONNX detector, with the
sidecar beside it that says the blob names and what the ONNX model's metadata said; decoding
is the onnxruntime backend's (`read_layout`, `models.letterbox`, `models.yolo`), so the same
model gives the same boxes. NCNN takes one image per extractor: a batch runs image by image.

FP32 by default: NCNN's own defaults turn fp16 storage and arithmetic on, which ARMv8.2 CPUs
and Vulkan GPUs use (faster, scores move); `fp16: true` asks for them. On x86 this wheel computes
in FP32 either way (the bundled model's scores differ from onnxruntime's by < 3e-6 with both).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..base import DEFAULT_CONFIDENCE_THRESHOLD, DEFAULT_IOU_THRESHOLD, InputSize
from ..errors import BackendUnavailable, InvalidConfig, ModelError, ModelNotFound, UnsupportedModel
from ..letterbox import LetterboxDetector, head_decoder
from ..manifest import manifest_path, verify_artifact
from ..ncnn_convert import read_sidecar
from .onnxruntime import read_layout

logger = logging.getLogger(__name__)

BACKEND_KEY: Final = "ncnn"


class NcnnConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["ncnn"] = BACKEND_KEY
    model: Path
    """The .param file; its weights (`weights`, default: the same name ending .bin) and the
    sidecar (.json, from models.ncnn_convert) lie beside it."""
    weights: Path | None = None
    input_size: InputSize | None = None
    """(width, height), multiples of 32; None: the size the model was converted at. Darknet
    models take any size; other graphs only the one they were traced at."""
    confidence_threshold: float = Field(DEFAULT_CONFIDENCE_THRESHOLD, ge=0.0, le=1.0)
    iou_threshold: float = Field(DEFAULT_IOU_THRESHOLD, ge=0.0, le=1.0)
    threads: int | None = Field(None, ge=1)
    """Threads for one inference; None: NCNN's default (the big cores' count). On a small CPU
    that other work shares, 1 keeps latency steady: NCNN's OpenMP threads wait on each other, and
    on a busy 2-core box some calls with 2 threads took ~500 ms (p95) where 1 thread took 20-30 ms."""
    vulkan: bool = False
    """Run on a Vulkan GPU when this ncnn has one; without one, the CPU (logged)."""
    fp16: bool = False
    """Let NCNN store and compute in fp16 where the hardware supports it (ARMv8.2, Vulkan): faster
    there, scores move a little. Off: FP32 throughout, the onnxruntime backend's boxes."""


def _use_vulkan(ncnn: Any, asked: bool) -> bool:
    """Vulkan when asked and a GPU is there (checked only when asked: probing prints loader noise)."""
    if not asked:
        return False
    if ncnn.get_gpu_count() > 0:
        return True
    logger.warning("ncnn: vulkan asked for but this ncnn sees no Vulkan GPU; running on the CPU")
    return False


def _check_manifest(param: Path) -> None:
    """A param file with a manifest beside it must match it (size, sha256) and be an NCNN artifact."""
    if not manifest_path(param).is_file():
        return
    manifest = verify_artifact(param)
    if manifest.format != "ncnn":
        raise UnsupportedModel(f"{param}: its manifest says format {manifest.format!r}; the ncnn backend runs "
                               "NCNN artifacts")


class NcnnDetector(LetterboxDetector):
    def __init__(self, config: NcnnConfig):
        try:
            import ncnn
        except ImportError as err:
            raise BackendUnavailable("backend 'ncnn' needs the ncnn package installed "
                                     "(pip install 'edgefleet[cpu]')") from err
        param, weights = config.model, config.weights or config.model.with_suffix(".bin")
        for path in (param, weights):
            if not path.is_file():
                raise ModelNotFound(f"NCNN model file {path} does not exist")
        _check_manifest(param)
        sidecar = read_sidecar(param)
        self.precision = sidecar.precision
        self.net = self._load(ncnn, config, param, weights)
        self.device = "vulkan" if self.net.opt.use_vulkan_compute else "cpu"
        self._setup_layout(config, sidecar)
        self.model_path = param
        self.last_inference_ms = 0.0
        try:
            self.warm_up()
        except ValueError as err:  # a decoder refusing the outputs' shapes
            raise UnsupportedModel(f"{param}: {err}") from err
        logger.info("ncnn: %s (%s head, %s) at %dx%d on %s, %d threads (warm-up %.1f ms)", param.name,
                    self.layout.head, self.precision, *self.input_size, self.device, self.net.opt.num_threads,
                    self.last_inference_ms)

    @staticmethod
    def _load(ncnn: Any, config: NcnnConfig, param: Path, weights: Path) -> Any:
        net = ncnn.Net()
        opt = net.opt
        if config.threads:
            opt.num_threads = config.threads
        opt.use_vulkan_compute = _use_vulkan(ncnn, config.vulkan)
        for name in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic"):
            setattr(opt, name, config.fp16)
        opt.use_bf16_storage = False
        if net.load_param(str(param)) != 0:
            raise UnsupportedModel(f"ncnn cannot read {param} as an NCNN param file")
        if net.load_model(str(weights)) != 0:
            raise UnsupportedModel(f"ncnn cannot load the weights {weights} for {param} (wrong or truncated file)")
        return net

    def _setup_layout(self, config: NcnnConfig, sidecar) -> None:
        self.layout = read_layout(sidecar.metadata, sidecar.input_shape, sidecar.output_shapes, str(config.model))
        self.names = self.layout.names
        self.use_head(*head_decoder(self.layout.head, self.layout.anchors, self.layout.masks))
        self.input_name, self.output_names = sidecar.input, list(sidecar.outputs)
        self.input_size = config.input_size or sidecar.traced_size
        # pnnx bakes the traced shape into reshapes; only the fully convolutional darknet graph resizes
        if self.layout.head != "darknet" and self.input_size != sidecar.traced_size:
            raise InvalidConfig(f"input_size {self.input_size} does not fit {config.model}: it was converted "
                                f"at {sidecar.traced_size} (width, height); convert it again at this size")
        self.confidence_threshold = config.confidence_threshold
        self.iou_threshold = config.iou_threshold
        self.max_batch, self.pad_batch, self.rect = None, False, False

    def _run(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Each image through its own extractor; outputs stacked batch first, as onnxruntime's."""
        if self.net is None:
            raise ModelError("this detector is closed")
        import ncnn

        per_image = []
        for image in tensor:
            with self.net.create_extractor() as extractor:
                extractor.input(self.input_name, ncnn.Mat(np.ascontiguousarray(image)))
                outs = []
                for name in self.output_names:
                    status, mat = extractor.extract(name)
                    if status != 0:
                        raise ModelError(f"ncnn failed to compute {name!r} of {self.model_path} (error {status})")
                    outs.append(np.array(mat))
                per_image.append(outs)
        return [np.stack(heads) for heads in zip(*per_image, strict=True)]

    def close(self) -> None:
        self.net = None


Config = NcnnConfig
DetectorClass = NcnnDetector
