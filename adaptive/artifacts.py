"""The model artifacts a device could run: each file with its manifest, checked against the profile.

    artifacts, rejected = discover_artifacts([models_dir, bundled_model_path], profile)

A directory contributes every file that has a `<file>.manifest.json` beside it; a file is taken
as given. Each artifact is verified (size, sha256) and checked for compatibility with the
profile (a TensorRT engine needs the TensorRT version and GPU it was built for); what fails is
returned in `rejected` with the reason, never silently dropped.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from edgefleet.models.errors import ModelError
from edgefleet.models.manifest import MANIFEST_SUFFIX, ArtifactManifest, DeviceCaps, verify_artifact

from .probe import HardwareProfile

logger = logging.getLogger(__name__)

BACKEND_BY_FORMAT = {"onnx": "onnxruntime", "tensorrt-engine": "tensorrt", "ultralytics-pt": "ultralytics",
                     "openvino-ir": "openvino", "ncnn": "ncnn"}
BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0}
PRECISION_RANK = {"fp32": 2, "fp16": 2, "int8": 1}
"""Accuracy order of precisions: FP16 loses next to nothing against FP32; INT8 loses some."""


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: ArtifactManifest
    source_capacity: int | None = None
    """The capacity of the FP32 source this was made from, when that source is among the artifacts:
    an INT8 copy or an OpenVINO IR of one network is the same network, whatever its files weigh."""

    @property
    def variant(self) -> str:
        """The file's name without its suffix: "yolov8n-int8" for yolov8n-int8.engine."""
        return self.path.stem

    @property
    def backend(self) -> str:
        return BACKEND_BY_FORMAT[self.manifest.format]

    @property
    def sha256(self) -> str:
        return self.manifest.file_sha256

    @property
    def capacity(self) -> int:
        """log2 of the parameter count, estimated from the file size and precision, rounded:
        yolov8n ~22, yolov3-tiny and yolov8s ~23, yolov8m ~25. Coarse on purpose (engines carry
        tactics, ONNX files carry graph structure); used only to order models by size. Companion
        files (an OpenVINO IR's or NCNN model's .bin) count; the source's capacity wins when known."""
        if self.source_capacity is not None:
            return self.source_capacity
        size = self.manifest.file_size + sum(_size(self.path.with_name(n)) for n in self.manifest.companions)
        params = size / BYTES_PER_WEIGHT.get(self.manifest.precision, 4.0)
        return round(math.log2(max(params, 1.0)))

    @property
    def agreement(self) -> float | None:
        """F1 of its detections against its FP32 source's (the manifest's `agreement.f1`); an FP32
        or FP16 artifact without one counts as 1.0 (it is the source, or converted without loss);
        an INT8 one without one (a TensorRT INT8 engine) is None: unchecked, not refused."""
        f1 = self.manifest.agreement.get("f1")
        if f1 is not None:
            return float(f1)
        return None if self.manifest.precision == "int8" else 1.0

    @property
    def stride(self) -> int:
        strides = self.manifest.decode_params.get("strides") if self.manifest.decode_params else None
        if isinstance(strides, list) and strides and all(isinstance(s, int) and s > 0 for s in strides):
            return max(strides)
        return 32

    def accepts(self, size: tuple[int, int]) -> bool:
        """Whether the model runs at (width, height)."""
        w, h = size
        if self.manifest.resolution_range is None:
            return (w, h) == self.manifest.input_size
        (min_w, min_h), top = self.manifest.resolution_range
        if w < min_w or h < min_h or w % self.stride or h % self.stride:
            return False
        return top is None or (w <= top[0] and h <= top[1])

    def input_sizes(self, sides: Sequence[int]) -> list[tuple[int, int]]:
        """Of the square sizes `sides`, those this model accepts, smallest first; a model with
        a fixed input gives its one size."""
        if self.manifest.resolution_range is None:
            return [self.manifest.input_size]
        return sorted({(s, s) for s in sides if self.accepts((s, s))})


@dataclass(frozen=True)
class Rejected:
    path: str
    reason: str

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


def device_caps(profile: HardwareProfile) -> DeviceCaps:
    """What models.manifest needs to know about this device, from the probe."""
    return DeviceCaps(tensorrt_version=profile.tensorrt_version or None,
                      gpu_compute_capability=profile.gpu_compute_capability or None,
                      onnxruntime_providers=tuple(profile.onnxruntime_providers),
                      runtimes=tuple(profile.runtimes))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def with_source_capacity(artifacts: Sequence[Artifact]) -> list[Artifact]:
    """Each artifact made from another one found (its manifest's source_sha256) takes that
    source's capacity, so the plan compares an INT8 or IR copy with its source as one network."""
    by_sha = {a.sha256: a for a in artifacts}
    out = []
    for art in artifacts:
        source = by_sha.get(art.manifest.source_sha256 or "")
        out.append(replace(art, source_capacity=source.capacity) if source is not None and source is not art else art)
    return out


def _candidate_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            files += sorted(p.with_name(p.name[:-len(MANIFEST_SUFFIX)])
                            for p in path.iterdir() if p.name.endswith(MANIFEST_SUFFIX))
        else:
            files.append(path)
    seen, unique = set(), []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def discover_artifacts(paths: Iterable[Path | str], profile: HardwareProfile | None = None,
                       ) -> tuple[list[Artifact], list[Rejected]]:
    """Artifacts under `paths` (directories and files) that verify and that `profile` can run.

    Hashes every file (sha256, streamed): a plan is made at start-up, not per frame.
    """
    caps = device_caps(profile) if profile is not None else None
    found: list[Artifact] = []
    rejected: list[Rejected] = []
    for path in _candidate_files(Path(p) for p in paths):
        try:
            manifest = verify_artifact(path, device=caps)
        except ModelError as err:
            logger.info("artifact %s not usable here: %s", path, err)
            rejected.append(Rejected(str(path), str(err)))
            continue
        twin = next((a for a in found if a.sha256 == manifest.file_sha256), None)
        if twin is not None:  # the bundled model copied into the models folder: time it once
            rejected.append(Rejected(str(path), f"the same file as {twin.path}"))
            continue
        found.append(Artifact(path, manifest))
    return with_source_capacity(found), rejected
