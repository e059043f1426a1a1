"""CPU backends x precisions x input sizes on vtest.avi: speed at batch 1 and agreement with the FP32 source.

Run through scripts/bench/detector.py --backends onnxruntime,openvino,ncnn --precisions fp32,int8.

The source is the bundled yolov3-tiny ONNX (FP32). Cells, for every input size:
- onnxruntime fp32: that file; int8: models.quantize.quantize_onnx (static QDQ);
- openvino fp32: that file on OpenVINO with inference_precision f32; int8: models.openvino_quantize;
  bf16 (asked for with --precisions ...,bf16): that file with inference_precision bf16, OpenVINO's
  own default on CPUs with AMX or AVX512-BF16;
- ncnn fp32: models.ncnn_convert.convert; int8: models.ncnn_convert.quantize.
INT8 artifacts are built once per size, calibrated on frames that are neither timed nor held.

Frames, all from the one video, disjoint: the first --frames are timed, the next --calib-frames
calibrate, and the --held-frames after those score agreement (models.agreement: F1 and mean IoU of
each cell's detections against onnxruntime FP32's, matched at IoU 0.5).

Timing: detect() on one frame (letterbox + inference + decode + NMS), per call, p50/p95, fps =
1000 / p50. All cells of one size are interleaved in blocks (detector.run_interleaved: --rounds
rounds of --block counted calls each, after uncounted settling calls, in an order rotating from
round to round), so background load on the machine hits every cell alike.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgefleet.models.agreement import score_agreement
from edgefleet.models.backends import create_detector
from edgefleet.models.bundled import default_model

BACKENDS = ("onnxruntime", "openvino", "ncnn")
PRECISIONS = ("fp32", "int8", "bf16")
REFERENCE = ("onnxruntime", "fp32")


@dataclass(frozen=True)
class FrameSets:
    timed: list[np.ndarray]
    calibration: list[np.ndarray]
    held: list[np.ndarray]


def read_frame_sets(video: Path, timed: int, calibration: int, held: int) -> FrameSets:
    """Three disjoint runs of consecutive frames from the start of `video`: timed, calibration, held."""
    need = timed + calibration + held
    cap = cv2.VideoCapture(str(video))
    frames: list[np.ndarray] = []
    while len(frames) < need:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    if len(frames) < need:
        raise SystemExit(f"{video} has {len(frames)} frames; --frames + --calib-frames + --held-frames = {need}")
    return FrameSets(frames[:timed], frames[timed:timed + calibration], frames[timed + calibration:])


def cells_for(backends: list[str], precisions: list[str]) -> list[tuple[str, str]]:
    """Every (backend, precision) asked for; bf16 exists for openvino only. The reference always comes first."""
    for name in backends:
        if name not in BACKENDS:
            raise SystemExit(f"--backends: unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    for name in precisions:
        if name not in PRECISIONS:
            raise SystemExit(f"--precisions: unknown precision {name!r}; known: {', '.join(PRECISIONS)}")
    cells = [(b, p) for b in backends for p in precisions if p != "bf16" or b == "openvino"]
    return [REFERENCE] + [c for c in cells if c != REFERENCE]


def build_artifact(backend: str, precision: str, source: Path, size: int, calibration: list[np.ndarray],
                   out_dir: Path) -> Path:
    """The model file a cell runs: the source itself, or what the converters and quantizers make of it."""
    input_size = (size, size)
    out = out_dir / f"{backend}-{precision}-{size}"
    if backend == "onnxruntime" and precision == "int8":
        from edgefleet.models.quantize import calibration_tensors, quantize_onnx

        out.mkdir(parents=True, exist_ok=True)
        return quantize_onnx(source, calibration_tensors(calibration, input_size), out / f"{source.stem}-int8.onnx")
    if backend == "openvino" and precision == "int8":
        from edgefleet.models.openvino_quantize import quantize as openvino_quantize

        return openvino_quantize(source, calibration, out, input_size=input_size)
    if backend == "ncnn":
        from edgefleet.models import ncnn_convert

        if precision == "int8":
            return ncnn_convert.quantize(source, calibration, out, input_size=input_size)[0]
        return ncnn_convert.convert(source, out, input_size=input_size)[0]
    return source  # onnxruntime and openvino run the FP32 ONNX file as it is


def detector_config(backend: str, precision: str, model: Path, size: int, threads: int | None) -> dict[str, Any]:
    config: dict[str, Any] = {"type": backend, "model": model, "input_size": (size, size)}
    if backend == "onnxruntime":
        config["intra_op_threads"] = threads
    else:
        config["threads"] = threads
    if backend == "openvino":
        config["inference_precision"] = "bf16" if precision == "bf16" else "f32"
    return config


def cell_key(backend: str, precision: str) -> str:
    return f"{backend} {precision}"


def bench_size(size: int, cells: list[tuple[str, str]], source: Path, frames: FrameSets, work: Path,
               threads: int | None, rounds: int, block: int) -> list[dict]:
    """Build, load, time (interleaved) and score every cell at one input size."""
    from detector import percentiles, run_interleaved  # (scripts/bench/detector.py)

    models = {cell: build_artifact(*cell, source, size, frames.calibration, work) for cell in cells}
    detectors = {cell: create_detector(detector_config(*cell, models[cell], size, threads)) for cell in cells}
    try:
        steps = {cell_key(*cell): (lambda i, d=detector: d.detect(frames.timed[i % len(frames.timed)]))
                 for cell, detector in detectors.items()}
        measured = run_interleaved(steps, rounds, block)
        reference = detectors[REFERENCE]
        rows = []
        for cell, detector in detectors.items():
            calls_ms, results = measured[cell_key(*cell)]
            timing = percentiles(calls_ms)
            agreement = score_agreement(reference, detector, frames.held).as_dict()
            rows.append({"backend": cell[0], "precision": cell[1], "input_size": size, "batch": 1,
                         "model": models[cell].name, "fps": round(1000.0 / timing["p50"], 1),
                         "p50_ms": timing["p50"], "p95_ms": timing["p95"], "calls": timing["n"],
                         "detections_per_frame": round(sum(len(r) for r in results) / len(results), 2),
                         "agreement": agreement})
        for row in rows:  # the reference's p50 over this cell's: above 1, faster than onnxruntime FP32
            row["speed_vs_reference"] = round(rows[0]["p50_ms"] / row["p50_ms"], 3)
        return rows
    finally:
        for detector in detectors.values():
            detector.close()


def versions() -> dict[str, str]:
    found = {}
    for name in ("openvino", "nncf", "ncnn"):
        try:
            found[name] = str(__import__(name).__version__)
        except (ImportError, AttributeError):
            found[name] = "not installed"
    return found


def run(video: Path, sizes: list[int], backends: list[str], precisions: list[str], *, frames: int,
        calib_frames: int, held_frames: int, threads: int | None, rounds: int, block: int,
        cache_dir: Path | None) -> dict:
    """The whole matrix, as one JSON-ready dict."""
    cells = cells_for(backends, precisions)
    sets = read_frame_sets(video, frames, calib_frames, held_frames)
    source = default_model(cache_dir)
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-backends-") as tmp:
        work = (cache_dir / "bench-backends") if cache_dir else Path(tmp)
        rows = [row for size in sizes for row in bench_size(size, cells, source, sets, work, threads, rounds, block)]
    return {"model": f"bundled yolov3-tiny ({source.name}, FP32 ONNX source)",
            "reference": cell_key(*REFERENCE), "threads": threads, "rounds": rounds, "block": block,
            "frames": {"timed": [0, frames], "calibration": [frames, frames + calib_frames],
                       "held": [frames + calib_frames, frames + calib_frames + held_frames]},
            "versions": versions(), "results": rows}
