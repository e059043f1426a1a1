#!/usr/bin/env python3
"""End-to-end agent fps on vtest.avi: today's default model against a CPU candidate, in one run.

    python scripts/bench/agent_candidate.py [--candidate openvino-int8|ncnn-int8|onnx-int8|FILE]
        [--size 416] [--max-frames 300] [--threads N] [--repeats 1] [--out FILE]

`default`: `edge-agent run` with no --model (the bundled yolov3-tiny ONNX on ONNX Runtime).
`candidate`: the same command with --model FILE. A format name builds FILE first from the bundled
model's FP32 ONNX (models.openvino_quantize / models.ncnn_convert / models.quantize.quantize_onnx,
as scripts/bench/detector_backends.py does) at --size, calibrated on --calib-frames frames taken
after the ones the agent runs over. Each run: a real controller on 127.0.0.1:0 and a real agent
process over the first --max-frames frames at fast pace (agent_vtest.bench_agent); the two alternate
(--repeats pairs, order rotating) so background load hits both alike. `fps_ratio` is the candidate's
summary fps over the default's, median over the pairs. `agreement`: the candidate's detections
against the default's (onnxruntime FP32, models.agreement) on --held-frames frames after the
calibration frames, at --size.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from agent_vtest import bench_agent  # (scripts/bench/agent_vtest.py)
from detector import default_video, host_info  # (scripts/bench/detector.py)
from detector_backends import build_artifact, detector_config, read_frame_sets
from report import write_report  # (scripts/bench/report.py)

from edgefleet.models.agreement import score_agreement
from edgefleet.models.backends import create_detector
from edgefleet.models.bundled import default_model

FORMATS = {"openvino-int8": ("openvino", "int8"), "ncnn-int8": ("ncnn", "int8"),
           "onnx-int8": ("onnxruntime", "int8")}


def candidate_model(spec: str, size: int, calibration: list, work: Path) -> tuple[Path, str, str]:
    """(model file, backend, precision): built from the bundled model for a format name, else the file given."""
    if spec in FORMATS:
        backend, precision = FORMATS[spec]
        return build_artifact(backend, precision, default_model(), size, calibration, work), backend, precision
    path = Path(spec)
    if not path.is_file():
        raise SystemExit(f"--candidate {spec!r}: neither a format ({', '.join(FORMATS)}) nor a file")
    from edgefleet.models import BACKEND_BY_SUFFIX

    return path, BACKEND_BY_SUFFIX.get(path.suffix.lower(), "onnxruntime"), "as built"


def agreement(model: Path, backend: str, size: int, held: list) -> dict:
    reference = create_detector(detector_config("onnxruntime", "fp32", default_model(), size, None))
    candidate = create_detector(detector_config(backend, "int8", model, size, None))
    try:
        return score_agreement(reference, candidate, held).as_dict()
    finally:
        reference.close()
        candidate.close()


def run_pairs(video: Path, frames: int, threads: int | None, model: Path, repeats: int) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {"default": [], "candidate": []}
    for pair in range(repeats):
        order = ["default", "candidate"] if pair % 2 == 0 else ["candidate", "default"]
        for name in order:
            runs[name].append(bench_agent(video, frames, threads, None if name == "default" else model))
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=default_video())
    parser.add_argument("--candidate", default="openvino-int8", help=f"{', '.join(FORMATS)}, or a model file")
    parser.add_argument("--size", type=int, default=416, help="input size the candidate is built and scored at")
    parser.add_argument("--max-frames", type=int, default=300, help="frames each agent run processes")
    parser.add_argument("--calib-frames", type=int, default=32)
    parser.add_argument("--held-frames", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="the agent's --threads (default: none given)")
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs (default, candidate)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: stdout)")
    args = parser.parse_args()
    sets = read_frame_sets(args.video, args.max_frames, args.calib_frames, args.held_frames)
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-candidate-") as tmp:
        model, backend, precision = candidate_model(args.candidate, args.size, sets.calibration, Path(tmp))
        scored = agreement(model, backend, args.size, sets.held)
        runs = run_pairs(args.video, args.max_frames, args.threads, model, args.repeats)
    ratios = [c["fps"] / d["fps"] for d, c in zip(runs["default"], runs["candidate"])]
    report = {"benchmark": "agent end to end, default vs candidate", "video": args.video.name,
              "host": host_info(), "max_frames": args.max_frames, "threads": args.threads,
              "default": {"model": "bundled yolov3-tiny ONNX on onnxruntime (no --model)",
                          "fps": [r["fps"] for r in runs["default"]], "runs": runs["default"]},
              "candidate": {"spec": args.candidate, "model": model.name, "backend": backend, "precision": precision,
                            "input_size": args.size, "fps": [r["fps"] for r in runs["candidate"]],
                            "runs": runs["candidate"], "agreement_vs_default": scored},
              "fps_ratio": round(statistics.median(ratios), 3)}
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
