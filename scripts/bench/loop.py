#!/usr/bin/env python3
"""Agent loop efficiency: tracked fps of the real agent vs raw detector fps, same video.

    python scripts/bench/loop.py [--video var/samples/vtest.avi] [--frames 795] [--intervals 1,2,3,4,5,6]
                                 [--rounds 3] [--threads N] [--rect] [--controller-nice 19]
                                 [--controller-idle] [--cpus LIST] [--skip-ultralytics] [--out FILE]

1. Raw detector fps, two ways, with the detector the agent loads (the bundled model, the agent's
   confidence threshold, ONNX Runtime's default threads; with `--rect`, rectangular inference
   on both sides):
   - `detect()` on frames decoded beforehand: the detector alone (no decoding, tracking or I/O);
   - `detect()` in a plain read-and-detect loop over the video: the detector on the video. Its median
     inference call (the runtime's run alone) against the agent's shows what the agent's other threads
     take from the inference they run beside.
2. For each detect interval: a real `edge-agent run` process over the video (decode on the reader
   thread, detect or predict, track, fsync'd outbox, publish, ack) against a real `edgefleet serve`
   process; its end-to-end fps over the frames it processed. The controller is not part of the
   agent (it runs elsewhere in a fleet) but shares this machine's cores here: it runs at the
   lowest priority (`--controller-nice`, default 19; `--controller-idle` adds SCHED_IDLE, under
   which it never preempts the agent), so that it takes the cores mostly when the agent leaves
   them idle, and the CPU seconds it took are reported with each run.
   Efficiency = agent fps at interval 1 / raw fps, against each raw figure.
   At interval 1 the agent also runs offline: enrolled, then with its controller stopped (`--drain-timeout 0`,
   exit 4 with every record kept in the outbox). That is the loop without the controller on its cores, as in a
   fleet, but also without the link's sending and the outbox's trimming on acks (on this machine about 0.3 ms
   of a ~35 ms frame, by thread CPU): the agent's own cost, short of those. On a machine with CPUs to spare,
   `--cpus` measures the whole path instead: the raw detector and the agent on those CPUs (a small device),
   the controller on the others.
3. Against Ultralytics' `track()` (ByteTrack) on the same ONNX file and video: the bundled
   detector in Ultralytics' detect layout (models.darknet_ultralytics; the same boxes as the
   bundled file), run by `YOLO(file).track(video, stream=True)` at its defaults (conf 0.1,
   bytetrack.yaml) and by the agent at interval 1 (`--model file`); tracked fps of each. Ultralytics
   decodes, detects and tracks in one thread and keeps its results in memory; the agent also
   writes and publishes every frame. Ultralytics' NMS needs torchvision's C++ op; where it does not
   load, the test shim stands in (see detector.py) and the time spent in it is reported, with
   Ultralytics' fps without it as a bound. Needs the train extra (else skipped, saying why).

Every measurement runs `--rounds` times, the raw detector and the agent runs alternating. The
efficiencies reported are the median over rounds of each round's agent / raw (pairs measured
seconds apart share the machine's background load), and the best agent run over the best raw
run (background load only ever slows a run down). Every run is in the JSON.
Writes JSON (stdout, or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from controller import ENV, start_controller  # (scripts/bench/controller.py)
from detector import read_frames  # (scripts/bench/detector.py)
from report import write_report  # (scripts/bench/report.py)

ENROLL_KEY = "efk_bench"


def predecoded_fps(detector, images: list[np.ndarray]) -> float:
    start = time.perf_counter()
    for image in images:
        detector.detect(image)
    return len(images) / (time.perf_counter() - start)


def read_and_detect(detector, video: Path, frames: int) -> tuple[float, float]:
    """fps of a plain read-and-detect loop, and its median inference call (ms, the runtime's run only)."""
    cap = cv2.VideoCapture(str(video))
    start, inference_ms = time.perf_counter(), []
    while len(inference_ms) < frames:
        ok, image = cap.read()
        if not ok:
            break
        detector.detect(image)
        inference_ms.append(detector.last_inference_ms)
    seconds = time.perf_counter() - start
    cap.release()
    return len(inference_ms) / seconds, statistics.median(inference_ms)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def agent_run(video: Path, frames: int, interval: int, args, model: Path | None = None,
              offline: bool = False) -> dict:
    """One `edge-agent run` over `frames` frames of `video` against its own controller process.
    `offline`: the agent enrolls with it (one frame), then runs with it stopped, as an agent whose
    controller is down: every record goes to the fsync'd outbox, the link retries, nothing is sent."""
    workdir = Path(tempfile.mkdtemp(prefix="edgefleet-loop-bench-"))
    launcher = ["nice", "-n", str(args.controller_nice), sys.executable, "-m", "edgefleet.fleet.cli"]
    launcher = ["chrt", "--idle", "0", *launcher] if args.controller_idle else launcher
    if args.cpus:  # the controller off the agent's CPUs, as on another machine
        launcher = ["taskset", "-c", ",".join(map(str, args.controller_cpus)), *launcher]
    controller = start_controller(workdir, "--enroll-key", ENROLL_KEY, log_level="warning", launcher=launcher)
    cmd = [sys.executable, "-m", "edgefleet.agent.cli", "--log-level", "error" if offline else "warning", "run",
           "--controller", controller.address, "--source", str(video), "--state-dir", str(workdir / "agent"),
           "--enroll-key", ENROLL_KEY, "--detect-interval", str(interval)]
    cmd += ["--threads", str(args.threads)] if args.threads else []
    cmd += ["--rect"] if args.rect else []
    cmd += ["--model", str(model)] if model else []
    try:
        if offline:
            subprocess.run([*cmd, "--max-frames", "1"], capture_output=True, cwd=ROOT, env=ENV, check=True)
            controller.proc.terminate()
            controller.proc.wait(30)
            cmd += ["--drain-timeout", "0"]  # exits 4: the records stay in the outbox, as they should
        started_cpu = 0.0 if offline else cpu_seconds(controller.proc.pid)
        proc = subprocess.run([*cmd, "--max-frames", str(frames)], capture_output=True, text=True, cwd=ROOT, env=ENV)
        controller_cpu = 0.0 if offline else cpu_seconds(controller.proc.pid) - started_cpu
    finally:
        controller.proc.terminate()
        controller.proc.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
    if proc.returncode != (4 if offline else 0):
        raise SystemExit(f"agent failed at interval {interval}: {proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"frames": summary["frames"], "fps": summary["fps"], "inference_ms_p50": summary["inference_ms_p50"],
            "objects": summary["detections"], "controller_cpu_s": round(controller_cpu, 2)}


def ultralytics_layout_model() -> Path:
    """The bundled detector in Ultralytics' detect layout, converted once next to it."""
    import onnx

    from edgefleet.models.bundled import default_model
    from edgefleet.models.darknet_ultralytics import to_ultralytics_layout

    bundled = default_model()
    path = bundled.with_name(f"{bundled.stem}-ultralytics-layout.onnx")
    if not path.is_file() or path.stat().st_mtime < bundled.stat().st_mtime:
        tmp = path.with_suffix(".tmp")
        onnx.save(to_ultralytics_layout(onnx.load(str(bundled))), str(tmp))
        tmp.replace(path)
    return path


def ultralytics_track(model: Path, video: Path, frames: int) -> dict:
    """Ultralytics' YOLO(model).track over the first `frames` frames of `video`, at its defaults."""
    from detector import timed_torchvision_nms
    from ultralytics import YOLO

    yolo = YOLO(str(model), task="detect")
    nms_ms = [0.0]
    count = objects = 0
    with timed_torchvision_nms(nms_ms):
        start = time.perf_counter()
        for result in yolo.track(str(video), stream=True, imgsz=416, verbose=False):
            count += 1
            objects += 0 if result.boxes.id is None else len(result.boxes.id)
            if count >= frames:
                break
        seconds = time.perf_counter() - start
    return {"frames": count, "fps": round(count / seconds, 2), "tracked_objects": objects,
            "nms_ms_per_frame": round(nms_ms[0] / count, 2),
            "fps_without_nms": round(count / (seconds - nms_ms[0] / 1000), 2)}


def vs_ultralytics(args) -> dict:
    from detector import prepare_ultralytics

    torchvision_nms, skipped = (None, "--skip-ultralytics") if args.skip_ultralytics else prepare_ultralytics()
    if skipped:
        return {"skipped": skipped}
    model = ultralytics_layout_model()
    theirs, ours = [], []
    for _ in range(args.rounds):
        theirs.append(ultralytics_track(model, args.video, args.frames))
        ours.append(agent_run(args.video, args.frames, 1, args, model=model))
    return {"model": model.name, "torchvision_nms": torchvision_nms, "ultralytics_track": theirs, "agent": ours,
            "fps_ratio": efficiency([o["fps"] for o in ours], [t["fps"] for t in theirs])}


def cpu_list(text: str) -> set[int]:
    try:
        cpus = {int(c) for c in text.split(",")}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CPU numbers separated by commas, got {text!r}") from None
    if not cpus <= os.sched_getaffinity(0):
        raise argparse.ArgumentTypeError(f"not among this process's CPUs {sorted(os.sched_getaffinity(0))}: {text!r}")
    return cpus


def efficiency(agent: list[float], raw: list[float]) -> dict:
    """agent / raw fps: the median over rounds of each round's ratio, and best over best."""
    return {"median_of_rounds": round(statistics.median(a / r for a, r in zip(agent, raw)), 3),
            "best_over_best": round(max(agent) / max(raw), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=ROOT / "var" / "samples" / "vtest.avi")
    parser.add_argument("--frames", type=int, default=795)
    parser.add_argument("--intervals", default="1,2,3,4,5,6")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each measurement")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rect", action="store_true", help="rectangular inference, raw detector and agent alike")
    parser.add_argument("--controller-nice", type=int, default=19, help="niceness of the controller process")
    parser.add_argument("--controller-idle", action="store_true",
                        help="run the controller under SCHED_IDLE (chrt --idle 0): a core only when no other "
                             "thread wants it")
    parser.add_argument("--cpus", type=cpu_list, default=None, metavar="LIST",
                        help="run the raw detector, the agent and Ultralytics on these CPUs only (e.g. 0,1: a "
                             "two-core device) with --threads defaulting to their count, and the controller on the "
                             "others, as if on another machine")
    parser.add_argument("--skip-ultralytics", action="store_true", help="leave out the comparison with track()")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.cpus:
        args.controller_cpus = sorted(os.sched_getaffinity(0) - args.cpus)
        if not args.controller_cpus:
            parser.error(f"--cpus {','.join(map(str, sorted(args.cpus)))} leaves no CPU for the controller")
        os.sched_setaffinity(0, args.cpus)  # inherited by the agent processes
        args.threads = args.threads or len(args.cpus)
    from edgefleet.agent.bytetrack import ByteTrackConfig
    from edgefleet.models import load_default_detector

    # the agent's detector: it keeps boxes down to ByteTrack's low threshold (agent.cli)
    detector = load_default_detector(intra_op_threads=args.threads, rect=args.rect,
                                     confidence_threshold=ByteTrackConfig().low_confidence_threshold)
    images = read_frames(args.video, args.frames)  # as many as the agent processes
    intervals = [int(i) for i in args.intervals.split(",")]
    predecoded, on_video, on_video_inference_ms, runs, offline = [], [], [], {k: [] for k in intervals}, []
    for _ in range(args.rounds):
        predecoded.append(round(predecoded_fps(detector, images), 2))
        rate, inference_ms = read_and_detect(detector, args.video, len(images))
        on_video.append(round(rate, 2))
        on_video_inference_ms.append(round(inference_ms, 2))
        for k in intervals:
            runs[k].append(agent_run(args.video, args.frames, k, args))
        if 1 in intervals:
            offline.append(agent_run(args.video, args.frames, 1, args, offline=True))
    agent = [{"interval": k, **max(runs[k], key=lambda r: r["fps"]), "runs": runs[k]} for k in intervals]
    result = {
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "video": args.video.name, "rounds": args.rounds, "rect": args.rect, "controller_nice": args.controller_nice,
        "controller_idle": args.controller_idle, "cpus": sorted(args.cpus) if args.cpus else None,
        "threads": args.threads,
        "raw_detector": {"frames": len(images), "predecoded_fps_runs": predecoded,
                         "read_and_detect_fps_runs": on_video,
                         "read_and_detect_inference_ms_p50_runs": on_video_inference_ms},
        "agent": agent,
    }
    if 1 in runs:
        fps = [r["fps"] for r in runs[1]]
        alone = [r["fps"] for r in offline]
        result["agent_offline_interval_1"] = offline
        result["efficiency_at_interval_1"] = {
            "vs_predecoded": efficiency(fps, predecoded), "vs_read_and_detect": efficiency(fps, on_video),
            "offline": {"vs_predecoded": efficiency(alone, predecoded),
                        "vs_read_and_detect": efficiency(alone, on_video)},
        }
    result["vs_ultralytics_track"] = vs_ultralytics(args)
    write_report(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
