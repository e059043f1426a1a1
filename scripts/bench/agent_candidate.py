#!/usr/bin/env python3
"""End-to-end agent fps on vtest.avi: today's default model against a CPU candidate, in one run.

    python scripts/bench/agent_candidate.py [--candidate openvino-int8|ncnn-int8|onnx-int8|plan|FILE]
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

`plan`: the candidate is `edge-agent run --auto-plan --models-dir DIR` (its default --target-fps and
--min-agreement), DIR holding what `edgefleet model quantize` makes of the bundled model (onnx-int8,
openvino-int8, ncnn-int8, each a subprocess of the real CLI, calibrated on the --calib-frames frames
after the ones the agent runs over and scored by it on the --held-frames after those). What the run
picked is the plan the controller holds for the device after the run (the agent's own report;
with the run's `rung` and `controller_events`), checked against `edge-agent plan --models-dir DIR`
on the same source, whose table goes into the JSON. `agreement`: the pick's manifest F1, and the
pick at the size it ran against FP32 onnxruntime at that size and against the default (416) on the
held frames.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import cv2
from agent_vtest import bench_agent  # (scripts/bench/agent_vtest.py)
from detector import default_video, host_info  # (scripts/bench/detector.py)
from detector_backends import build_artifact, detector_config, read_frame_sets
from report import write_report  # (scripts/bench/report.py)

from edgefleet.models.agreement import score_agreement
from edgefleet.models.backends import create_detector
from edgefleet.models.bundled import default_model
from edgefleet.models.manifest import manifest_path

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


def run_pairs(video: Path, frames: int, threads: int | None, model: Path | None, repeats: int,
              extra: tuple[str, ...] = ()) -> dict[str, list[dict]]:
    """`repeats` pairs of agent runs, the order rotating: the default, and the candidate (--model
    `model`, or `extra` flags)."""
    runs: dict[str, list[dict]] = {"default": [], "candidate": []}
    for pair in range(repeats):
        order = ["default", "candidate"] if pair % 2 == 0 else ["candidate", "default"]
        for name in order:
            runs[name].append(bench_agent(video, frames, threads, None, ()) if name == "default"
                              else bench_agent(video, frames, threads, model, extra))
    return runs


def median_ratio(runs: dict[str, list[dict]]) -> float:
    return round(statistics.median(c["fps"] / d["fps"] for d, c in zip(runs["default"], runs["candidate"])), 3)


# ---- --candidate plan ----

QUANTIZE_FORMATS = ("onnx-int8", "openvino-int8", "ncnn-int8")


def write_frames(frames: list, folder: Path, first: int) -> Path:
    """Frames as JPEGs named by their index in the video (the CLI reads a folder sorted by name)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames, start=first):
        cv2.imwrite(str(folder / f"vtest-{i:05d}.jpg"), frame)
    return folder


def quantize_cli(fmt: str, frames_dir: Path, calib_count: int, models_dir: Path) -> list[str]:
    """`edgefleet model quantize` of the bundled model into `models_dir`, as an operator runs it."""
    source = default_model()  # --out the folder: the files are named as the CLI names them (`<stem>-<format>.<ext>`)
    cmd = [sys.executable, "-m", "edgefleet.fleet.cli", "model", "quantize", str(source), "--calib-dir",
           str(frames_dir), "--calib-count", str(calib_count), "--format", fmt, "--out", str(models_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout.strip().splitlines()


def plan_cli(models_dir: Path, video: Path, state_dir: Path) -> tuple[dict, str]:
    """`edge-agent plan --models-dir` on the agent's source: --json, then the table from the same
    calibration cache (the second call reads the first one's timings, so both show one choice)."""
    base = [sys.executable, "-m", "edgefleet.agent.cli", "--log-level", "warning", "plan", "--models-dir",
            str(models_dir), "--source", str(video), "--state-dir", str(state_dir)]
    outputs = []
    for extra in (["--json"], []):
        proc = subprocess.run(base + extra, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(base + extra)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        outputs.append(proc.stdout)
    return json.loads(outputs[0]), outputs[1].rstrip()


CHOICE = ("model", "backend", "precision", "input_width", "input_height", "detect_interval")


def choice(plan: dict) -> dict:
    return {key: plan.get(key) for key in CHOICE}


def pick_agreement(picked: dict, model_path: Path, held: list) -> dict:
    """On the held frames: the pick at the size it ran against FP32 onnxruntime at that size (what
    quantization changed), and against the default (FP32 at 416, what `edge-agent run` without --model
    detects); and FP32 at the pick's size against the default (what the size alone changes)."""
    size = picked["input_width"]
    pairs = {f"pick_vs_fp32_{size}": (("onnxruntime", "fp32", default_model(), size),
                                      (picked["backend"], picked["precision"], model_path, size)),
             "pick_vs_default_fp32_416": (("onnxruntime", "fp32", default_model(), 416),
                                          (picked["backend"], picked["precision"], model_path, size)),
             f"fp32_{size}_vs_default_fp32_416": (("onnxruntime", "fp32", default_model(), 416),
                                                  ("onnxruntime", "fp32", default_model(), size))}
    scores = {}
    for name, (ref, cand) in pairs.items():
        reference = create_detector(detector_config(*ref, None))
        candidate = create_detector(detector_config(*cand, None))
        try:
            scores[name] = score_agreement(reference, candidate, held).as_dict()
        finally:
            reference.close()
            candidate.close()
    return scores


def plan_candidate(args: argparse.Namespace, sets, work: Path) -> dict:
    """Build the models folder, ask `edge-agent plan`, run the pairs, and report what the runs picked."""
    models_dir = work / "models"
    models_dir.mkdir()
    frames_dir = write_frames(sets.calibration + sets.held, work / "frames", args.max_frames)
    quantized = {fmt: quantize_cli(fmt, frames_dir, len(sets.calibration), models_dir) for fmt in QUANTIZE_FORMATS}
    listing = sorted(p.name for p in models_dir.iterdir())
    plan_json, table = plan_cli(models_dir, args.video, work / "plan-state")
    runs = run_pairs(args.video, args.max_frames, args.threads, None, args.repeats,
                     ("--auto-plan", "--models-dir", str(models_dir)))
    picks = [choice(r["controller_plan"] or {}) for r in runs["candidate"]]
    # the model name is the file's stem, which two formats may share: the backend and precision tell them apart
    paths = {(c["model"], c["backend"], c["precision"]): Path(c["model_path"]) for c in plan_json["candidates"]}
    picked = picks[0]
    path = paths[(picked["model"], picked["backend"], picked["precision"])]
    manifest = json.loads(manifest_path(path).read_text()) if manifest_path(path).is_file() else {}
    return {
        "spec": "plan", "command": "edge-agent run --auto-plan --models-dir DIR (default --target-fps and "
                                   "--min-agreement)",
        "models_dir": listing,
        "quantize": {fmt: lines for fmt, lines in quantized.items()},
        "picked": {**picked, "file": path.name, "same_in_every_run": all(p == picked for p in picks),
                   "manifest_agreement": manifest.get("agreement")},
        "agreement": pick_agreement(picked, path, sets.held),
        "plan_cli": {"choice": choice(plan_json["plan"]), "same_as_run": choice(plan_json["plan"]) == picked,
                     "table": table.splitlines()},
        "fps": [r["fps"] for r in runs["candidate"]], "runs": runs["candidate"], "default_runs": runs["default"],
    }


def fixed_candidate(args: argparse.Namespace, sets, work: Path) -> dict:
    """A format name or file run with --model: built, scored against the default, run in pairs."""
    model, backend, precision = candidate_model(args.candidate, args.size, sets.calibration, work)
    scored = agreement(model, backend, args.size, sets.held)
    runs = run_pairs(args.video, args.max_frames, args.threads, model, args.repeats)
    return {"spec": args.candidate, "model": model.name, "backend": backend, "precision": precision,
            "input_size": args.size, "fps": [r["fps"] for r in runs["candidate"]], "runs": runs["candidate"],
            "agreement_vs_default": scored, "default_runs": runs["default"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=default_video())
    parser.add_argument("--candidate", default="openvino-int8",
                        help=f"{', '.join(FORMATS)}, plan (--auto-plan over a models folder), or a model file")
    parser.add_argument("--size", type=int, default=416, help="input size the candidate is built and scored at")
    parser.add_argument("--max-frames", type=int, default=300, help="frames each agent run processes")
    parser.add_argument("--calib-frames", type=int, default=32)
    parser.add_argument("--held-frames", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="the agent's --threads (default: none given)")
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs (default, candidate)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: stdout)")
    args = parser.parse_args()
    sets = read_frame_sets(args.video, args.max_frames, args.calib_frames, args.held_frames)
    load_before = os.getloadavg()  # other work on the machine slows both sides, not always alike
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-candidate-") as tmp:
        build = plan_candidate if args.candidate == "plan" else fixed_candidate
        candidate = build(args, sets, Path(tmp))
    runs = {"default": candidate.pop("default_runs"), "candidate": candidate["runs"]}
    walls = [d["process_wall_s"] / c["process_wall_s"] for d, c in zip(runs["default"], runs["candidate"])]
    report = {"benchmark": "agent end to end, default vs candidate", "video": args.video.name,
              "host": host_info(), "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()},
              "max_frames": args.max_frames, "threads": args.threads,
              "default": {"model": "bundled yolov3-tiny ONNX on onnxruntime (no --model)",
                          "fps": [r["fps"] for r in runs["default"]], "runs": runs["default"]},
              "candidate": candidate, "fps_ratio": median_ratio(runs),
              "process_wall_ratio": round(statistics.median(walls), 3)}
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
