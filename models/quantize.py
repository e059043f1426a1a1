"""CPU artifacts from an FP32 ONNX detector: INT8 quantized on real frames, or FP32 converted to
another runtime; each scored against its source on held frames, with its manifest.

    quantize_artifact(Path("yolov8n.onnx"), Path("frames/"), fmt="onnx-int8", calib_count=128)
    convert_artifact(Path("yolov8n.onnx"), Path("held/"), fmt="ncnn")

Frames: the image files of `--calib-dir`, sorted by name (models.tensorrt_build.list_images,
the TensorRT calibrator's reading). The first `calib_count` calibrate; the held frames that
score agreement are the ones after them (or those of a separate holdout folder), never the same.
Each frame is letterboxed exactly as the onnxruntime backend letterboxes it (models.yolo.letterbox_batch).

Formats:
- onnx-int8: ONNX Runtime static quantization, QDQ, per-channel int8 weights, uint8 activations
  calibrated with MinMax; runs on the onnxruntime backend (format "onnx", precision "int8").
- openvino-int8, ncnn-int8: `quantize(onnx_path, calibration, out_dir, *, input_size, progress)`
  of models.openvino_quantize / models.ncnn_convert, imported only when asked for.
- openvino, ncnn (FP32, `convert_artifact`): `convert(onnx_path, out_dir, *, input_size)` of the
  same modules; nothing calibrates, the held frames only score the conversion.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import logging
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx

from .agreement import Agreement, score_agreement
from .errors import BackendUnavailable, InvalidConfig, ModelError, ModelNotFound, UnsupportedModel
from .manifest import (
    ArtifactManifest,
    atomic_write_bytes,
    edgefleet_version,
    manifest_path,
    now_iso,
    sha256_file,
    write_manifest,
)
from .tensorrt_build import list_images, source_manifest
from .yolo import letterbox_batch

logger = logging.getLogger(__name__)

QUANTIZER_VERSION = "1"
COMPANION_SUFFIXES = (".bin", ".json")
"""The files an OpenVINO IR (.bin) or NCNN model (.bin, .json) has beside its model file, same stem."""
Size = tuple[int, int]  # (width, height)
Progress = Callable[[int, int], None]
"""progress(done, total): called as calibration frames are read."""


@dataclass(frozen=True)
class CpuFormat:
    """An artifact kind made from an FP32 ONNX: the manifest format and precision it gets, the
    runtime and backend that run it."""

    name: str
    manifest_format: str
    runtime: str
    backend: str
    module: str | None  # models.<module>.quantize / .convert for formats built outside this file
    suffix: str
    precision: str = "int8"


FORMATS = {
    "onnx-int8": CpuFormat("onnx-int8", "onnx", "onnxruntime", "onnxruntime", None, ".onnx"),
    "openvino-int8": CpuFormat("openvino-int8", "openvino-ir", "openvino", "openvino", "openvino_quantize", ".xml"),
    "ncnn-int8": CpuFormat("ncnn-int8", "ncnn", "ncnn", "ncnn", "ncnn_convert", ".param"),
    "openvino": CpuFormat("openvino", "openvino-ir", "openvino", "openvino", "openvino_quantize", ".xml", "fp32"),
    "ncnn": CpuFormat("ncnn", "ncnn", "ncnn", "ncnn", "ncnn_convert", ".param", "fp32"),
}
QUANTIZE_FORMATS = tuple(name for name, f in FORMATS.items() if f.precision == "int8")
CONVERT_FORMATS = tuple(name for name, f in FORMATS.items() if f.precision == "fp32")


def quant_format(name: str) -> CpuFormat:
    if name not in QUANTIZE_FORMATS:
        raise InvalidConfig(f"unknown quantized format {name!r}; known: {', '.join(QUANTIZE_FORMATS)}")
    return FORMATS[name]


def convert_format(name: str) -> CpuFormat:
    if name not in CONVERT_FORMATS:
        raise InvalidConfig(f"unknown FP32 format {name!r}; known: {', '.join(CONVERT_FORMATS)}")
    return FORMATS[name]


# ---- frames ----

@dataclass(frozen=True)
class FrameSplit:
    """Calibration frames and held frames (agreement), as files."""

    calibration: list[Path]
    held: list[Path]


def images_in(folder: Path, what: str) -> list[Path]:
    """The images of `folder` (models.tensorrt_build.list_images); ModelNotFound naming `what` if none."""
    images = list_images(Path(folder))
    if not images:
        raise ModelNotFound(f"{what} {folder} has no images (.jpg, .jpeg, .png, .bmp)")
    return images


def check_count(flag: str, count: int | None) -> None:
    if count is not None and count < 1:
        raise InvalidConfig(f"{flag} must be >= 1, got {count}")


def split_frames(calib_dir: Path, calib_count: int | None = None, holdout_dir: Path | None = None,
                 held_count: int | None = None) -> FrameSplit:
    """The first `calib_count` images of `calib_dir` calibrate; the rest (or `holdout_dir`'s) are held.

    With neither `calib_count` nor `holdout_dir`, three quarters calibrate and the last quarter is held.
    """
    images = images_in(calib_dir, "calibration folder")
    check_count("--calib-count", calib_count)
    check_count("--held-count", held_count)
    if holdout_dir is not None:
        return FrameSplit(images[:calib_count], images_in(holdout_dir, "holdout folder")[:held_count])
    count = calib_count or max(1, len(images) * 3 // 4)
    held = images[count:]
    if not held:
        raise InvalidConfig(f"{calib_dir} has {len(images)} image(s), all used to calibrate (--calib-count "
                            f"{count}); agreement needs held frames: lower --calib-count or give --holdout-dir")
    return FrameSplit(images[:count], held[:held_count])


def frames_sha256(paths: list[Path]) -> str:
    """sha256 over the sorted frame files' sha256 digests (hex, one a line): the same frames, the same hash."""
    digests = sorted(sha256_file(p) for p in paths)
    return hashlib.sha256("".join(d + "\n" for d in digests).encode()).hexdigest()


def read_frames(paths: list[Path], progress: Progress | None = None) -> list[np.ndarray]:
    """BGR frames; an unreadable file is an error (the hash covers it, so it must be used)."""
    frames = []
    for done, path in enumerate(paths, 1):
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise UnsupportedModel(f"cannot read the image {path}; remove it from the folder")
        frames.append(frame)
        if progress:
            progress(done, len(paths))
    return frames


def calibration_tensors(frames: list[np.ndarray], input_size: Size) -> list[np.ndarray]:
    """Each frame as a (1, 3, H, W) float32 RGB tensor in 0..1, letterboxed as the onnxruntime backend does."""
    return [np.ascontiguousarray(letterbox_batch([f], input_size)[0]) for f in frames]


class TextProgress:
    """`calibration frames  12/32  37%` on one line of stderr (a line per quarter when piped)."""

    def __init__(self, what: str, stream=None):
        self.what, self.stream = what, stream or sys.stderr
        self.tty = self.stream.isatty()
        self.shown = -1

    def __call__(self, done: int, total: int) -> None:
        percent = 100 * done // max(total, 1)
        if not self.tty and percent // 25 == self.shown and done != total:
            return
        self.shown = percent // 25
        end = "\n" if done == total or not self.tty else ""
        print(f"\r{self.what}  {done}/{total}  {percent:3d}%", end=end, file=self.stream, flush=True)


# ---- ONNX Runtime static QDQ ----

class TensorReader:
    """onnxruntime.quantization's CalibrationDataReader over prepared tensors (duck-typed: get_next)."""

    def __init__(self, input_name: str, tensors: list[np.ndarray]):
        self.input_name = input_name
        self._items: Iterator[np.ndarray] = iter(tensors)

    def get_next(self) -> dict[str, np.ndarray] | None:
        tensor = next(self._items, None)
        return None if tensor is None else {self.input_name: tensor}


def onnx_input_name(model: onnx.ModelProto) -> str:
    initializers = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in initializers)


def quantize_onnx(onnx_path: Path, tensors: list[np.ndarray], out: Path) -> Path:
    """Static QDQ int8 (per-channel weights) of `onnx_path` into `out`, keeping the source's metadata."""
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as err:
        raise BackendUnavailable("onnx-int8 needs onnxruntime (with onnxruntime.quantization)") from err
    source = onnx.load(str(onnx_path))
    reader = TensorReader(onnx_input_name(source), tensors)
    with tempfile.TemporaryDirectory(prefix="edgefleet-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        quantized = Path(tmp) / "quantized.onnx"
        quantize_static(str(prepared), str(quantized), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        model = onnx.load(str(quantized))
    del model.metadata_props[:]
    model.metadata_props.extend(source.metadata_props)  # the backend reads the layout from them
    atomic_write_bytes(out, model.SerializeToString())
    return out


def format_module(fmt: CpuFormat) -> Any:
    """The module that builds `fmt`, imported now, so this file works without the cpu extra."""
    try:
        return importlib.import_module(f"{__package__}.{fmt.module}")
    except ImportError as err:
        raise BackendUnavailable(f"{fmt.name} is not available in this edgefleet ({__package__}.{fmt.module}: "
                                 f"{err}); install the cpu extra: pip install 'edgefleet[cpu]'") from err


def build_aside(out: Path, make: Callable[[Path], Path | tuple[Path, ...]]) -> Path:
    """`make(folder)` builds the artifact in a temporary folder beside `out`; its files then move
    into place, the model file last (it names a whole set), so a failed build clobbers nothing."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}-") as tmp:
        made = make(Path(tmp))
        made = Path(made[0] if isinstance(made, tuple) else made)  # ncnn: (param, bin)
        for suffix in COMPANION_SUFFIXES:
            if made.with_suffix(suffix).is_file():
                made.with_suffix(suffix).replace(out.with_suffix(suffix))
        made.replace(out)
    return out


def quantize_with(fmt: CpuFormat, onnx_path: Path, frames: list[np.ndarray], out: Path, input_size: Size,
                  progress: Progress | None) -> Path:
    """Build the artifact from BGR `frames`: here for onnx-int8, else with the format's own module,
    which letterboxes them itself."""
    if fmt.module is None:
        return quantize_onnx(onnx_path, calibration_tensors(frames, input_size), out)
    module = format_module(fmt)
    return build_aside(out, lambda folder: module.quantize(onnx_path, frames, folder, input_size=input_size,
                                                           progress=progress))


# ---- agreement and manifest ----

def held_agreement(onnx_path: Path, artifact: Path, fmt: CpuFormat, held: list[np.ndarray],
                   input_size: Size) -> Agreement:
    """The artifact's detections against its FP32 source's, both at `input_size`, on the held frames."""
    from .backends import create_detector

    reference = create_detector({"type": "onnxruntime", "model": onnx_path, "input_size": input_size})
    candidate = create_detector({"type": fmt.backend, "model": artifact, "input_size": input_size})
    try:
        return score_agreement(reference, candidate, held)
    finally:
        reference.close()
        candidate.close()


def artifact_manifest(source: ArtifactManifest, source_sha256: str, artifact: Path, fmt: CpuFormat, *,
                      calibration: dict[str, Any], agreement: Agreement) -> ArtifactManifest:
    """The artifact's manifest: its source's layout and classes, what it needs (labels), how it was made."""
    return dataclasses.replace(
        source, format=fmt.manifest_format, precision=fmt.precision,  # type: ignore[arg-type]
        file_sha256=sha256_file(artifact), file_size=artifact.stat().st_size, created_at=now_iso(),
        producer=f"edgefleet.models.quantize {QUANTIZER_VERSION} ({fmt.name})", source_sha256=source_sha256,
        tool_versions={**source.tool_versions, "edgefleet": edgefleet_version(), fmt.runtime: runtime_version(fmt)},
        labels={**source.labels, "runtime": fmt.runtime, "device": "cpu"},
        calibration=calibration, agreement=agreement.as_dict(), companions=companions(artifact, fmt))


def companions(artifact: Path, fmt: CpuFormat) -> dict[str, str]:
    """The files beside a two-file format's artifact (weights .bin, NCNN's .json sidecar): name -> sha256."""
    if fmt.module is None:
        return {}
    found = (artifact.with_suffix(s) for s in COMPANION_SUFFIXES)
    return {p.name: sha256_file(p) for p in found if p.is_file()}


def runtime_version(fmt: CpuFormat) -> str:
    try:
        return str(importlib.import_module(fmt.runtime).__version__)
    except (ImportError, AttributeError):
        return "unknown"


def out_path(onnx_path: Path, fmt: CpuFormat, out: Path | None) -> Path:
    """The artifact's path: `out` when it ends in the format's suffix, else `<stem>-<format><suffix>`
    (`yolov3-tiny-openvino-int8.xml`) in the folder `out` names, or beside the source."""
    if out is not None and out.suffix == fmt.suffix:
        return out
    return (out or onnx_path.parent) / f"{onnx_path.stem}-{fmt.name}{fmt.suffix}"


@dataclass(frozen=True)
class Built:
    artifact: Path
    manifest_file: Path
    manifest: ArtifactManifest


def fp32_onnx_source(onnx_path: Path) -> ArtifactManifest:
    source = source_manifest(onnx_path)  # raises on a missing, unreadable or mismatching source
    if source.precision != "fp32" or source.format != "onnx":
        raise UnsupportedModel(f"{onnx_path} is {source.format} {source.precision}; start from an FP32 ONNX model")
    return source


def scored(onnx_path: Path, source: ArtifactManifest, artifact: Path, kind: CpuFormat, held: list[Path],
           size: Size, calibration: dict[str, Any]) -> Built:
    """Score the built `artifact` against its source on the `held` frames and write its manifest."""
    manifest_path(artifact).unlink(missing_ok=True)  # a stale one would refuse the new file at load
    agreement = held_agreement(onnx_path, artifact, kind, read_frames(held), size)
    manifest = artifact_manifest(source, sha256_file(onnx_path), artifact, kind, calibration=calibration,
                                 agreement=agreement)
    return Built(artifact, write_manifest(manifest, artifact), manifest)


def quantize_artifact(onnx_path: Path, calib_dir: Path, fmt: str = "onnx-int8", *, calib_count: int | None = None,
                      holdout_dir: Path | None = None, held_count: int | None = None, out: Path | None = None,
                      input_size: Size | None = None, progress: Progress | None = None) -> Built:
    """Quantize `onnx_path` on `calib_dir`'s frames into `out`, score it on held frames, write its manifest."""
    kind = quant_format(fmt)
    onnx_path = Path(onnx_path)
    source = fp32_onnx_source(onnx_path)
    size = input_size or source.input_size
    split = split_frames(calib_dir, calib_count, holdout_dir, held_count)
    frames = read_frames(split.calibration, progress)
    artifact = quantize_with(kind, onnx_path, frames, out_path(onnx_path, kind, Path(out) if out else None), size,
                             progress)
    calibration = {"frames_sha256": frames_sha256(split.calibration), "frames": len(split.calibration),
                   "held_frames": len(split.held), "input_size": list(size)}
    return scored(onnx_path, source, artifact, kind, split.held, size, calibration)


def convert_artifact(onnx_path: Path, held_dir: Path, fmt: str, *, held_count: int | None = None,
                     out: Path | None = None, input_size: Size | None = None) -> Built:
    """Convert `onnx_path` to FP32 `fmt` ("openvino" IR, "ncnn") into `out`, score it on `held_dir`'s
    frames (all of them, or the first `held_count`), write its manifest."""
    kind = convert_format(fmt)
    onnx_path = Path(onnx_path)
    source = fp32_onnx_source(onnx_path)
    size = input_size or source.input_size
    check_count("--held-count", held_count)
    held = images_in(held_dir, "held-frames folder")[:held_count]
    module = format_module(kind)
    artifact = build_aside(out_path(onnx_path, kind, Path(out) if out else None),
                           lambda folder: module.convert(onnx_path, folder, input_size=size))
    return scored(onnx_path, source, artifact, kind, held, size, {})


__all__ = ["CONVERT_FORMATS", "FORMATS", "QUANTIZE_FORMATS", "Built", "CpuFormat", "FrameSplit", "ModelError",
           "TensorReader", "TextProgress", "calibration_tensors", "convert_artifact", "frames_sha256",
           "quantize_artifact", "quantize_onnx", "split_frames"]
