"""Artifact manifests: what a model file is, what it was made from, and what it needs to run.

A manifest is JSON beside its artifact, `<file>.manifest.json`:

    yolov3-tiny.onnx                  the artifact
    yolov3-tiny.onnx.manifest.json    format, layout, precision, input size, classes, sha256, ...

TensorRT engines are not portable across GPU architectures or TensorRT versions, so an engine's
manifest also names the TensorRT version and GPU compute capability it was built with, and
`verify_artifact` refuses it on a device that differs (`IncompatibleArtifact`). Reading is strict:
an unknown key, a missing key or a wrong type is a `ManifestError` naming the field and the value.

    manifest = manifest_for_onnx(Path("model.onnx"))      # from the ONNX file's own metadata
    write_manifest(manifest, Path("model.onnx"))
    verify_artifact(Path("model.onnx"), device=probe_device())
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import onnx
from google.protobuf.message import DecodeError
from pydantic import ConfigDict, TypeAdapter, ValidationError

from .darknet import FORMAT as DARKNET_FORMAT
from .errors import ArtifactMismatch, IncompatibleArtifact, ManifestError, ModelNotFound, UnsupportedModel
from .metadata import ultralytics_metadata

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"

ArtifactFormat = Literal["onnx", "tensorrt-engine", "ultralytics-pt", "openvino-ir", "ncnn"]
Layout = Literal["darknet-yolo", "ultralytics", "end2end"]
Precision = Literal["fp32", "fp16", "int8"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_VERSION = re.compile(r"\d+\.\d+(\.\d+)*")
_COMPUTE_CAPABILITY = re.compile(r"\d+\.\d+")


@dataclass(frozen=True)
class ArtifactManifest:
    """What one model file is. Sizes are pixels; ranges are inclusive; None in a range's max: unbounded.

    batch_range: (min, max) images per inference call; (1, 1) is a fixed batch of one.
    resolution_range: ((min_w, min_h), (max_w, max_h)) the input accepts; None: fixed at
    input_width x input_height (the size the model was made for, or an engine's optimum).
    source_sha256: of what this was made from (Darknet weights for a converted ONNX, the ONNX
    file for an engine); None when unknown. decode_params: what the layout's decoder needs
    (anchors, masks and strides for "darknet-yolo").
    labels: what rollouts match devices on, copied into the wire manifest's labels; an INT8 CPU
    artifact says `runtime` (onnxruntime, openvino, ncnn) and `device` ("cpu").
    calibration: for a quantized artifact, `frames_sha256` (sha256 over the sorted frame files'
    sha256 digests), `frames` (how many) and `input_size` ([width, height]).
    agreement: the artifact's detections against its FP32 ONNX source's on held frames
    (models.agreement: f1, mean_iou, score_shift, ...). companions: the files the artifact needs
    beside it (an OpenVINO IR's .bin, an NCNN model's .bin and .json), name -> sha256, checked
    with it. The last four fields are optional when read, so manifests written before them still load.
    """

    __pydantic_config__ = ConfigDict(extra="forbid", strict=True)

    format: ArtifactFormat
    layout: Layout
    precision: Precision
    input_width: int
    input_height: int
    class_names: tuple[str, ...]
    file_sha256: str
    file_size: int
    created_at: str
    producer: str
    batch_range: tuple[int, int | None] = (1, 1)
    resolution_range: tuple[tuple[int, int], tuple[int, int] | None] | None = None
    source_sha256: str | None = None
    tensorrt_version: str | None = None
    gpu_compute_capability: str | None = None
    opset: int | None = None
    decode_params: dict[str, Any] = field(default_factory=dict)
    tool_versions: dict[str, str] = field(default_factory=dict)
    manifest_version: int = MANIFEST_VERSION
    labels: dict[str, str] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)
    companions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.manifest_version != MANIFEST_VERSION:
            raise self._bad("manifest_version", f"this edgefleet reads version {MANIFEST_VERSION} only")
        self._check_sizes()
        for name in ("file_sha256", "source_sha256"):
            value = getattr(self, name)
            if value is not None and not _SHA256.fullmatch(value):
                raise self._bad(name, "must be 64 lowercase hex digits")
        try:
            datetime.fromisoformat(self.created_at)
        except ValueError as err:
            raise self._bad("created_at", "must be an ISO 8601 time") from err
        if self.format == "tensorrt-engine":
            self._check_engine_build()
        if self.layout == "darknet-yolo" and not {"anchors", "masks"} <= set(self.decode_params):
            raise self._bad("decode_params", "layout 'darknet-yolo' needs 'anchors' and 'masks'")

    def _bad(self, name: str, why: str) -> ManifestError:
        return ManifestError(f"manifest field {name}={getattr(self, name)!r}: {why}")

    def _check_sizes(self) -> None:
        """Input size, file size, batch range and resolution range."""
        for name in ("input_width", "input_height"):
            if getattr(self, name) <= 0:
                raise self._bad(name, "must be a positive number of pixels")
        if self.file_size < 0:
            raise self._bad("file_size", "must be >= 0 bytes")
        low, high = self.batch_range
        if low < 1 or (high is not None and high < low):
            raise self._bad("batch_range", "must be (min >= 1, max >= min or null)")
        if self.resolution_range is not None:
            (min_w, min_h), top = self.resolution_range
            if min_w <= 0 or min_h <= 0 or (top is not None and (top[0] < min_w or top[1] < min_h)):
                raise self._bad("resolution_range", "must be ((min_w, min_h) > 0, (max_w, max_h) >= min or null)")

    def _check_engine_build(self) -> None:
        """An engine names the TensorRT version and GPU compute capability it was built with."""
        if self.tensorrt_version is None or not _VERSION.fullmatch(self.tensorrt_version):
            raise self._bad("tensorrt_version", "an engine must name the TensorRT version it was built with, "
                                                "like '10.3.0'")
        if self.gpu_compute_capability is None or not _COMPUTE_CAPABILITY.fullmatch(self.gpu_compute_capability):
            raise self._bad("gpu_compute_capability", "an engine must name the GPU compute capability it was "
                                                      "built for, like '8.7'")

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.input_width, self.input_height


_ADAPTER = TypeAdapter(ArtifactManifest)
_FIELDS = tuple(f.name for f in dataclasses.fields(ArtifactManifest))
OPTIONAL_FIELDS = frozenset({"labels", "calibration", "agreement", "companions"})
"""Fields added after manifest version 1 was first written: a manifest without them is still valid."""
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
RUNTIME_OF_FORMAT = {"onnx": "onnxruntime", "openvino-ir": "openvino", "ncnn": "ncnn"}
"""The runtime a CPU artifact format needs (TensorRT engines are checked on their own terms)."""


def sha256_file(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks (engines and models can be hundreds of MB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def require_file(path: Path, what: str = "") -> Path:
    """`path` as a Path when it is a file; else ModelNotFound saying whether it is a folder or missing."""
    path = Path(path)
    if not path.is_file():
        state = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ModelNotFound(f"{what + ' ' if what else ''}{path} {state}")
    return path


def manifest_path(artifact: Path) -> Path:
    """`<artifact>.manifest.json`, beside the artifact."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + MANIFEST_SUFFIX)


def to_json(manifest: ArtifactManifest) -> str:
    return json.dumps(dataclasses.asdict(manifest), indent=2) + "\n"


def parse_manifest(text: str | bytes, source: str = "manifest") -> ArtifactManifest:
    """Validate manifest JSON strictly: every field present, no others, exact JSON types."""
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ManifestError(f"{source}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ManifestError(f"{source}: unknown field {unknown[0]}={data[unknown[0]]!r} "
                            f"(known: {', '.join(_FIELDS)})")
    missing = [name for name in _FIELDS if name not in data and name not in OPTIONAL_FIELDS]
    if missing:
        raise ManifestError(f"{source}: missing field(s) {', '.join(missing)}")
    try:
        return _ADAPTER.validate_json(text, strict=True)
    except ValidationError as err:
        problems = "; ".join(f"field {'.'.join(str(p) for p in e['loc'])}={e.get('input')!r}: {e['msg']}"
                             for e in err.errors())
        raise ManifestError(f"{source}: {problems}") from err
    except ManifestError as err:
        raise ManifestError(f"{source}: {err}") from err


MANIFEST_LABEL = "models.manifest"
"""The signed artifact label that carries a model's manifest (JSON) from `edgefleet artifact push` to
the controller and the devices: a TensorRT engine's layout, and the files a bundle must hold."""


def labelled_manifest(labels: Mapping[str, str], fmt: str) -> ArtifactManifest:
    """The models manifest in an artifact's `labels`, which must describe a `fmt` model (ManifestError:
    missing, unreadable, or of another format)."""
    text = labels.get(MANIFEST_LABEL)
    if not text:
        raise ManifestError(f"a {fmt} artifact carries its models manifest in the label {MANIFEST_LABEL!r} "
                            "(`edgefleet artifact push MODEL` adds it)")
    manifest = parse_manifest(text, source=f"label {MANIFEST_LABEL}")
    if manifest.format != fmt:
        raise ManifestError(f"the artifact is signed as {fmt!r}, its models manifest says {manifest.format!r}")
    return manifest




def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the complete new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_manifest(manifest: ArtifactManifest, artifact: Path) -> Path:
    """Write the manifest beside `artifact` (atomically); returns the manifest's path."""
    target = manifest_path(artifact)
    atomic_write_bytes(target, to_json(manifest).encode())
    return target


def read_manifest(artifact: Path) -> ArtifactManifest:
    """The manifest beside `artifact`, strictly validated."""
    path = manifest_path(artifact)
    try:
        text = path.read_text()
    except FileNotFoundError as err:
        raise ManifestError(f"{artifact} has no manifest ({path.name} is missing); for an ONNX file "
                            f"create one with `edgefleet model manifest {artifact}`") from err
    except OSError as err:
        raise ManifestError(f"cannot read {path}: {err}") from err
    return parse_manifest(text, source=str(path))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def edgefleet_version() -> str:
    try:
        return importlib.metadata.version("edgefleet")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ---- ONNX files -> manifest ----

def _dims(value_info: onnx.ValueInfoProto) -> list[int | None]:
    """Static dims as ints, symbolic or unknown dims as None."""
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in value_info.type.tensor_type.shape.dim]


def manifest_for_onnx(path: Path, file_sha256: str | None = None) -> ArtifactManifest:
    """Describe an ONNX detector from its own metadata: ours (models.darknet) or Ultralytics' export.

    `file_sha256`: the file's digest when the caller has just verified it (a downloaded artifact),
    which spares reading the whole file again; by default it is computed here."""
    path = require_file(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError) as err:
        raise UnsupportedModel(f"{path} is not a readable ONNX file: {err}") from err
    meta = {p.key: p.value for p in model.metadata_props}
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(_dims(inputs[0])) != 4:
        raise UnsupportedModel(f"{path}: expected one NCHW image input, got {[i.name for i in inputs]}")
    batch, _, height, width = _dims(inputs[0])
    elem_type = inputs[0].type.tensor_type.elem_type
    precision: Precision = "fp16" if elem_type == onnx.TensorProto.FLOAT16 else "fp32"
    if any(node.op_type in QDQ_OPS for node in model.graph.node):  # quantized (QDQ): a float input, int8 inside
        precision = "int8"
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    tools = {"onnx": onnx.__version__, "edgefleet": edgefleet_version()}
    if meta.get("format") == DARKNET_FORMAT:
        fields = _darknet_fields(path, meta)
        fields["producer"] = f"{model.producer_name} {model.producer_version}".strip()
        tools["edgefleet.models.darknet"] = meta.get("converter_version", "unknown")
    elif (info := ultralytics_metadata(meta, str(path))) is not None:
        fields = _ultralytics_fields(path, meta, info)
        tools["ultralytics"] = meta.get("version", "unknown")
    else:
        raise UnsupportedModel(f"{path}: no detector metadata (neither models.darknet's format="
                               f"{DARKNET_FORMAT!r} nor an Ultralytics export); keys: {sorted(meta)}")
    stride, meta_w, meta_h = fields.pop("stride"), fields.pop("width"), fields.pop("height")
    in_w, in_h = width or meta_w, height or meta_h
    return ArtifactManifest(
        format="onnx", precision=precision, input_width=in_w, input_height=in_h,
        file_sha256=file_sha256 or sha256_file(path), file_size=path.stat().st_size, created_at=now_iso(),
        batch_range=(1, None) if batch is None else (batch, batch),
        resolution_range=None if (height and width) else ((stride, stride), None),
        opset=opset, tool_versions=tools, **fields)


def _darknet_fields(path: Path, meta: dict[str, str]) -> dict[str, Any]:
    try:
        strides = json.loads(meta["strides"])
        return {
            "layout": "darknet-yolo",
            "class_names": tuple(json.loads(meta["names"])),
            "width": int(meta["input_width"]), "height": int(meta["input_height"]),
            "source_sha256": meta.get("weights_sha256"),
            "decode_params": {"anchors": json.loads(meta["anchors"]), "masks": json.loads(meta["masks"]),
                              "strides": strides},
            "stride": max(strides),
        }
    except (KeyError, ValueError, TypeError) as err:
        raise UnsupportedModel(f"{path}: broken models.darknet metadata ({err!r})") from err


def _ultralytics_fields(path: Path, meta: dict[str, str], info: dict[str, Any]) -> dict[str, Any]:
    if info["task"] != "detect":
        raise UnsupportedModel(f"{path}: Ultralytics task {info['task']!r} is not supported (detect only)")
    height, width = info["imgsz"]
    return {
        "layout": "end2end" if info["end2end"] or info["args"].get("nms") else "ultralytics",
        "class_names": tuple(info["names"]),
        "width": width, "height": height,
        "producer": f"ultralytics {meta.get('version', 'unknown')}",
        "stride": info["stride"],
    }


# ---- artifacts vs manifests vs devices ----

@dataclass(frozen=True)
class DeviceCaps:
    """What a device can run: its TensorRT version and GPU (None when absent), onnxruntime providers,
    and the other CPU runtimes installed ("openvino", "ncnn")."""

    tensorrt_version: str | None = None
    gpu_compute_capability: str | None = None
    onnxruntime_providers: tuple[str, ...] = ()
    runtimes: tuple[str, ...] = ()


def probe_device(device_index: int = 0) -> DeviceCaps:
    """This machine's capabilities; an SDK that does not import simply counts as absent."""
    try:
        import onnxruntime
        providers = tuple(onnxruntime.get_available_providers())
    except ImportError:
        providers = ()
    trt_version = capability = None
    try:
        import tensorrt
        trt_version = tensorrt.__version__
    except ImportError:
        pass
    try:
        import pycuda.driver as cuda
        cuda.init()
        capability = compute_capability(cuda.Device(device_index).compute_capability())
    except Exception as err:  # noqa: BLE001 - no pycuda, no driver or no GPU all mean "no GPU here"
        logger.debug("no CUDA GPU %d here: %r", device_index, err)
    return DeviceCaps(trt_version, capability, providers, tuple(n for n in ("openvino", "ncnn") if _imports(n)))


def _imports(module: str) -> bool:
    """Whether a runtime imports here (found on the path is not enough: a broken install is absent)."""
    try:
        importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - anything an import raises means the runtime is not usable
        logger.debug("%s does not import here: %r", module, err)
        return False
    return True


def compute_capability(major_minor: tuple[int, int]) -> str:
    """(8, 7) -> "8.7", as manifests write it."""
    major, minor = major_minor
    return f"{int(major)}.{int(minor)}"


def _major_minor(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:2])


def check_compatible(manifest: ArtifactManifest, device: DeviceCaps, name: str = "artifact") -> None:
    """Raise `IncompatibleArtifact` (what the file needs, what the device has) unless `device` can run it.

    Engines: TensorRT major.minor and the GPU compute capability must match the build's exactly.
    ONNX: the device needs onnxruntime (any execution provider).
    """
    if manifest.format == "tensorrt-engine":
        built = manifest.tensorrt_version
        assert built is not None  # an engine's manifest names it (ArtifactManifest.__post_init__)
        needs = f"TensorRT {built} on a GPU of compute capability {manifest.gpu_compute_capability}"
        if device.tensorrt_version is None:
            raise IncompatibleArtifact(f"{name} is a TensorRT engine and needs {needs}; this device has no "
                                       "TensorRT")
        if _major_minor(device.tensorrt_version) != _major_minor(built):
            raise IncompatibleArtifact(
                f"{name} was built with TensorRT {built} and needs TensorRT "
                f"{'.'.join(map(str, _major_minor(built)))}.x; this device has TensorRT "
                f"{device.tensorrt_version}: rebuild the engine on this device from its ONNX")
        if device.gpu_compute_capability != manifest.gpu_compute_capability:
            raise IncompatibleArtifact(
                f"{name} was built for GPU compute capability {manifest.gpu_compute_capability}; this device's "
                f"GPU is {device.gpu_compute_capability or 'absent'}: rebuild the engine on this device")
    elif manifest.format == "onnx" and not device.onnxruntime_providers:
        raise IncompatibleArtifact(f"{name} is an ONNX model and needs onnxruntime; this device has none")
    elif manifest.format in ("openvino-ir", "ncnn") and RUNTIME_OF_FORMAT[manifest.format] not in device.runtimes:
        raise IncompatibleArtifact(f"{name} is a {manifest.format} model and needs "
                                   f"{RUNTIME_OF_FORMAT[manifest.format]}; this device has none")


def verify_artifact(path: Path, manifest: ArtifactManifest | None = None,
                    device: DeviceCaps | None = None) -> ArtifactManifest:
    """Check `path` against its manifest (read from beside it if not given), and `device` if given.

    Size first (cheap), then sha256 (streamed). Raises `ArtifactMismatch`, `IncompatibleArtifact`,
    `ManifestError` or `ModelNotFound`; returns the manifest when everything matches.
    """
    path = require_file(path)
    manifest = read_manifest(path) if manifest is None else manifest
    size = path.stat().st_size
    if size != manifest.file_size:
        raise ArtifactMismatch(f"{path} is {size} bytes; its manifest says {manifest.file_size} "
                               "(truncated or replaced)")
    digest = sha256_file(path)
    if digest != manifest.file_sha256:
        raise ArtifactMismatch(f"{path}: sha256 {digest} does not match its manifest's {manifest.file_sha256}")
    for name, expected in manifest.companions.items():
        companion = path.with_name(name)
        if not companion.is_file():
            raise ArtifactMismatch(f"{path} needs {companion} beside it (its manifest lists it); it is missing")
        if sha256_file(companion) != expected:
            raise ArtifactMismatch(f"{companion}: sha256 does not match {path}'s manifest (replaced or damaged)")
    if device is not None:
        check_compatible(manifest, device, name=str(path))
    return manifest
