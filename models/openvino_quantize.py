"""OpenVINO IR from an ONNX detector: INT8 by NNCF post-training quantization on real frames, or FP32.

    xml = quantize(Path("model.onnx"), frames, Path("out"), input_size=(416, 416))
    xml = convert(Path("model.onnx"), Path("out"), input_size=(416, 416))   # FP32 weights, no frames
    create_detector({"type": "openvino", "model": xml})

Calibration frames are letterboxed exactly as the openvino backend letterboxes them
(`models.yolo.letterbox_batch`, one frame a batch), so the activation ranges NNCF measures are
those the detector will see. The IR keeps the ONNX file's metadata (OpenVINO carries it in the
model's rt_info), so the backend decodes it as it decodes the ONNX file. Its height and width are
left dynamic, as the ONNX file's were: the backend fixes them at its `input_size` when compiling.
Frames of the scenes the camera sees calibrate best; a few hundred are plenty, 32 already work.
"""
from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BackendUnavailable, InvalidConfig, UnsupportedModel
from .manifest import require_file
from .yolo import letterbox_batch

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""(frames done, frames in all), called as calibration reads each frame."""


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise BackendUnavailable(f"INT8 quantization for OpenVINO needs {name}: pip install 'edgefleet[cpu]' "
                                 f"({err})") from err


def calibration_tensors(frames: list[np.ndarray], input_size: tuple[int, int],
                        progress: Progress | None = None) -> Iterator[np.ndarray]:
    """Each frame as the backend prepares it: a (1, 3, H, W) float32 letterboxed tensor."""
    for done, frame in enumerate(frames, start=1):
        tensor, _ = letterbox_batch([frame], input_size)
        if progress is not None:
            progress(done, len(frames))
        yield tensor


def _check_model(onnx_path: Path, input_size: tuple[int, int]) -> None:
    require_file(onnx_path, "model")
    if any(v <= 0 or v % 32 for v in input_size):
        raise InvalidConfig(f"input_size must be positive multiples of 32 (width, height), got {input_size}")


def _check_inputs(onnx_path: Path, calibration: list[np.ndarray], input_size: tuple[int, int]) -> None:
    _check_model(onnx_path, input_size)
    if not calibration:
        raise InvalidConfig("quantization needs at least one calibration frame; got none")
    for index, frame in enumerate(calibration):
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise InvalidConfig(f"calibration frame {index} is {frame.dtype} {frame.shape}; "
                                "expected BGR uint8 (height, width, 3)")


def quantize(onnx_path: Path, calibration: list[np.ndarray], out_dir: Path, *, input_size: tuple[int, int],
             progress: Progress | None = None) -> Path:
    """Quantize `onnx_path` to INT8 on `calibration` (BGR frames) into `out_dir`; the .xml's path.

    Writes `<stem>-int8.xml` and `<stem>-int8.bin` (weights) into `out_dir` (made if missing),
    each atomically: a reader never sees half a file. `input_size`: (width, height) the frames are
    letterboxed to, the size the detector will run at. `progress(done, total)` follows calibration,
    which is most of the time taken.
    """
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    _check_inputs(onnx_path, calibration, input_size)
    ov, nncf = _import("openvino"), _import("nncf")
    model = _read(ov, onnx_path)
    dataset = nncf.Dataset(list(calibration_tensors(calibration, input_size, progress)))
    quantized = nncf.quantize(model, dataset, preset=nncf.QuantizationPreset.MIXED,
                              subset_size=len(calibration))
    xml = _save(ov, quantized, out_dir / f"{onnx_path.stem}-int8.xml")
    logger.info("quantized %s to INT8 on %d frames at %dx%d: %s", onnx_path.name, len(calibration),
                *input_size, xml)
    return xml


def convert(onnx_path: Path, out_dir: Path, *, input_size: tuple[int, int]) -> Path:
    """FP32 OpenVINO IR of `onnx_path` in `out_dir` (`<stem>.xml` + `.bin`, weights kept float32,
    not OpenVINO's default FP16 compression): the .xml's path. `input_size` is only checked: the IR
    keeps the ONNX file's dynamic height and width, as `quantize` does."""
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    _check_model(onnx_path, input_size)
    ov = _import("openvino")
    xml = _save(ov, _read(ov, onnx_path), out_dir / f"{onnx_path.stem}.xml")
    logger.info("converted %s to an FP32 OpenVINO IR: %s", onnx_path.name, xml)
    return xml


def _read(ov: Any, onnx_path: Path) -> Any:
    try:
        return ov.Core().read_model(str(onnx_path))
    except Exception as err:  # OpenVINO raises RuntimeError with its own text for bad files
        raise UnsupportedModel(f"openvino cannot read {onnx_path}: {err}") from err


def _save(ov: Any, model: Any, xml: Path) -> Path:
    """Save `model` as `xml` + `.bin`, each atomically, the weights first: the .xml names a complete pair."""
    xml.parent.mkdir(parents=True, exist_ok=True)
    partial = xml.with_name(f".{xml.stem}.partial.xml")
    ov.save_model(model, str(partial), compress_to_fp16=False)
    partial.with_suffix(".bin").replace(xml.with_suffix(".bin"))
    partial.replace(xml)
    return xml
