"""ONNX -> NCNN (param/bin) with pnnx, and the sidecar the `ncnn` backend reads.

NCNN's files carry no metadata, so `convert` writes three files into `out_dir`:

    <stem>.ncnn.param   the graph (pnnx names the input blob `in0` and the outputs `out0`, `out1`,
    <stem>.ncnn.bin     ... in the ONNX graph's output order); the weights
    <stem>.ncnn.json    the sidecar (`Sidecar`): blob names, the ONNX model's metadata_props and
                        input/output shapes (what `read_layout` decodes), the size it was traced at

The `ncnn` backend finds the sidecar beside the param file (`sidecar_path`). pnnx runs as the
binary the `pnnx` wheel bundles (its `pnnx.convert` wraps the same binary but ignores failures);
nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import BackendUnavailable, InvalidConfig, ModelError, ModelNotFound, UnsupportedModel
from .manifest import require_file
from .yolo import letterbox_batch

SIDECAR_VERSION = 1
PNNX_TIMEOUT_S = 600
Dim = int | str | None
Progress = Callable[[int, int], None]
"""progress(done, total), as models.quantize calls it."""


@dataclass(frozen=True)
class Sidecar:
    """What the `ncnn` backend needs to run and decode a param/bin pair, beside it as JSON."""

    input: str
    """Input blob name (pnnx: `in0`)."""
    outputs: list[str]
    """Output blob names, in the ONNX model's output order (pnnx: `out0`, `out1`, ...)."""
    metadata: dict[str, str]
    """The ONNX model's metadata_props (format, names, anchors, masks / Ultralytics' keys)."""
    input_shape: list[Dim]
    """The ONNX input's shape, a name for each dynamic dimension."""
    output_shapes: list[list[Dim]]
    traced_size: tuple[int, int]
    """(width, height) pnnx traced the graph at."""
    precision: str = "fp32"
    calibration: dict[str, object] = field(default_factory=dict)
    """For an INT8 model: how it was calibrated (frames, their sha256); empty for FP32."""
    version: int = SIDECAR_VERSION


def sidecar_path(param: Path) -> Path:
    """`x.ncnn.param` -> `x.ncnn.json`."""
    return Path(param).with_suffix(".json")


def write_sidecar(sidecar: Sidecar, param: Path) -> Path:
    path = sidecar_path(param)
    path.write_text(json.dumps(asdict(sidecar), indent=2) + "\n")
    return path


def read_sidecar(param: Path) -> Sidecar:
    """The sidecar beside `param`; `ModelError` naming the file when it is missing or malformed."""
    path = sidecar_path(param)
    if not path.is_file():
        raise ModelNotFound(f"{path} is missing: NCNN files carry no metadata; convert the ONNX model with "
                            "edgefleet.models.ncnn_convert.convert, which writes it beside the param file")
    try:
        data = json.loads(path.read_text())
        data["traced_size"] = tuple(data["traced_size"])
        sidecar = Sidecar(**data)
    except (ValueError, TypeError, KeyError) as err:
        raise ModelError(f"{path} is not an NCNN sidecar written by ncnn_convert: {err}") from err
    if sidecar.version != SIDECAR_VERSION:
        raise ModelError(f"{path}: sidecar version {sidecar.version}, this edgefleet reads {SIDECAR_VERSION}")
    return sidecar


def pnnx_binary() -> Path:
    """The pnnx executable the `pnnx` wheel ships."""
    try:
        import pnnx
    except ImportError as err:
        raise BackendUnavailable("converting to NCNN needs the pnnx package (pip install 'edgefleet[cpu]')") from err
    path = Path(pnnx.EXEC_PATH)
    if not path.is_file():
        raise BackendUnavailable(f"the pnnx package has no executable at {path}")
    return path


def _dims(value_info) -> list[Dim]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value_info.type.tensor_type.shape.dim]


def onnx_description(onnx_path: Path) -> tuple[dict[str, str], list[Dim], list[list[Dim]]]:
    """(metadata_props, input shape, output shapes) of an ONNX model with one input."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and others for a file that is not a model
        raise UnsupportedModel(f"{onnx_path} is not an ONNX model: {err}") from err
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise UnsupportedModel(f"{onnx_path}: NCNN conversion needs one image input, it has {len(inputs)}")
    meta = {p.key: p.value for p in model.metadata_props}
    return meta, _dims(inputs[0]), [_dims(o) for o in model.graph.output]


def _run_pnnx(onnx_path: Path, work: Path, input_size: tuple[int, int]) -> tuple[Path, Path]:
    """pnnx on `onnx_path`, every file it writes inside `work`; (param, bin) or `ModelError` with its log."""
    width, height = input_size
    work = work.resolve()  # pnnx runs in `work`: a relative path would be read from there
    param, weights = work / "model.ncnn.param", work / "model.ncnn.bin"
    outputs = {"pnnxparam": "model.pnnx.param", "pnnxbin": "model.pnnx.bin", "pnnxpy": "model_pnnx.py",
               "pnnxonnx": "model.pnnx.onnx", "ncnnpy": "model_ncnn.py"}
    source = work / "model.onnx"  # pnnx writes `<input stem>.pnnxsim.onnx` beside its input: keep it in `work`
    try:
        source.symlink_to(onnx_path.resolve())
    except OSError:
        shutil.copyfile(onnx_path, source)
    command = [str(pnnx_binary()), str(source), f"inputshape=[1,3,{height},{width}]f32",
               f"ncnnparam={param}", f"ncnnbin={weights}", "fp16=0",
               *(f"{key}={work / name}" for key, name in outputs.items())]
    try:
        done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=PNNX_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        raise ModelError(f"pnnx took over {PNNX_TIMEOUT_S} s converting {onnx_path}") from err
    if done.returncode != 0 or not param.is_file() or not weights.is_file():
        log = (done.stdout + done.stderr).strip().splitlines()[-15:]
        raise ModelError(f"pnnx could not convert {onnx_path} (exit {done.returncode}):\n" + "\n".join(log))
    return param, weights


def output_blobs(param: Path) -> tuple[str, list[str]]:
    """(input blob, output blobs in order) of a pnnx-written param: `in0` and `out0`, `out1`, ...

    pnnx names graph outputs `out<i>` in the ONNX output order; read back, not assumed."""
    tops: list[str] = []
    for line in param.read_text().splitlines()[2:]:
        parts = line.split()
        if len(parts) >= 4:
            tops += parts[4 + int(parts[2]):4 + int(parts[2]) + int(parts[3])]
    outs = sorted((b for b in tops if b.startswith("out") and b[3:].isdigit()), key=lambda b: int(b[3:]))
    if "in0" not in tops or not outs:
        raise ModelError(f"{param}: expected pnnx's blob names in0 and out0.., found {tops[:3]}..{tops[-3:]}")
    return "in0", outs


def convert(onnx_path: Path, out_dir: Path, *, input_size: tuple[int, int]) -> tuple[Path, Path]:
    """Convert an ONNX detector to NCNN FP32 in `out_dir`: (param, bin), sidecar beside them.

    `input_size` (width, height): the shape pnnx traces at; the darknet models `models.darknet`
    makes run at any multiple of 32 afterwards, other graphs only at this size. Weights stay
    float32 (pnnx's default would store them as fp16).
    """
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    require_file(onnx_path)
    if any(v <= 0 or v % 32 for v in input_size):
        raise InvalidConfig(f"input_size must be positive multiples of 32, got {input_size}")
    meta, input_shape, output_shapes = onnx_description(onnx_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = onnx_path.name.removesuffix(".onnx")
    param, weights = out_dir / f"{stem}.ncnn.param", out_dir / f"{stem}.ncnn.bin"
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".pnnx-") as tmp:
        made_param, made_bin = _run_pnnx(onnx_path, Path(tmp), input_size)
        input_blob, outputs = output_blobs(made_param)
        if len(outputs) != len(output_shapes):
            raise ModelError(f"pnnx made {len(outputs)} outputs from {onnx_path}, which has {len(output_shapes)}")
        shutil.move(made_bin, weights)
        shutil.move(made_param, param)
    write_sidecar(Sidecar(input_blob, outputs, meta, input_shape, output_shapes, (input_size[0], input_size[1])), param)
    return param, weights


def calibration_inputs(calibration: list[np.ndarray], input_size: tuple[int, int]) -> list[np.ndarray]:
    """(1, 3, H, W) float32 tensors as the backend prepares them: BGR uint8 frames are letterboxed
    to `input_size`; tensors already letterboxed (models.quantize's) must be of that size."""
    width, height = input_size
    tensors = []
    for index, item in enumerate(calibration):
        if item.dtype == np.uint8 and item.ndim == 3 and item.shape[2] == 3:
            item = letterbox_batch([item], input_size)[0]
        item = item.reshape((1, *item.shape)) if item.ndim == 3 else item
        if item.dtype != np.float32 or item.shape != (1, 3, height, width):
            raise InvalidConfig(f"calibration item {index} is {item.dtype} {item.shape}: expected a BGR uint8 frame "
                                f"or a (1, 3, {height}, {width}) float32 letterboxed tensor")
        tensors.append(item)
    if not tensors:
        raise InvalidConfig("NCNN INT8 quantization needs at least one calibration frame; got none")
    return tensors


def quantize(onnx_path: Path, calibration: list[np.ndarray], out_dir: Path, *, input_size: tuple[int, int],
             progress: Progress | None = None, method: str = "max") -> tuple[Path, Path]:
    """INT8 NCNN model of `onnx_path` in `out_dir`: `<stem>.ncnn-int8.param/.bin/.json`; (param, bin).

    Converts to FP32 NCNN (pnnx), calibrates every convolution's input on `calibration` (BGR
    frames or letterboxed tensors, see `calibration_inputs`) and rewrites those convolutions to
    int8, as ncnn2table + ncnn2int8 would (models.ncnn_int8; `method` "max" or "kl", see there).
    `progress(done, total)` follows the calibration passes (one, two for "kl"). The sidecar
    records precision "int8" and the calibration's method, frame count and sha256.
    """
    from .ncnn_int8 import calibrate, read_param, rewrite

    tensors = calibration_inputs(calibration, input_size)
    try:
        import ncnn
    except ImportError as err:
        raise BackendUnavailable("NCNN INT8 quantization needs the ncnn package "
                                 "(pip install 'edgefleet[cpu]')") from err
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(onnx_path).name.removesuffix(".onnx")
    param, weights = out_dir / f"{stem}.ncnn-int8.param", out_dir / f"{stem}.ncnn-int8.bin"
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".ncnn-int8-") as tmp:
        fp32_param, fp32_bin = convert(onnx_path, Path(tmp), input_size=input_size)
        sidecar = read_sidecar(fp32_param)
        blobs = sorted({layer.bottoms[0] for layer in read_param(fp32_param)[1] if layer.type == "Convolution"})
        net = ncnn.Net()
        for name in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage"):
            setattr(net.opt, name, False)
        net.opt.lightmode = False  # keep every blob of a pass: each is extracted
        if net.load_param(str(fp32_param)) != 0 or net.load_model(str(fp32_bin)) != 0:
            raise ModelError(f"ncnn cannot load the FP32 conversion of {onnx_path}")
        scales = calibrate(net, ncnn, sidecar.input, blobs, tensors, progress, method)
        rewrite(fp32_param, fp32_bin, scales, Path(tmp) / "int8.param", Path(tmp) / "int8.bin")
        shutil.move(Path(tmp) / "int8.bin", weights)
        shutil.move(Path(tmp) / "int8.param", param)
    digest = hashlib.sha256(b"".join(t.tobytes() for t in tensors)).hexdigest()
    calibration_info = {"frames": len(tensors), "tensors_sha256": digest, "method": method,
                        "input_size": list(input_size)}
    write_sidecar(replace(sidecar, precision="int8", calibration=calibration_info), param)
    return param, weights
