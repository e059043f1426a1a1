#!/usr/bin/env python3
"""InferenceService under load: N client streams at F fps each against a real `edge-agent serve`.

    python scripts/bench/inference_stress.py --streams 8 --fps 5 --duration 20 [--window-ms 5] [--max-batch 8]
                                             [--sweep 0,5,10,20] [--synthetic] [--stream-queue 2] [--out FILE]

Frames: the first `--frames` frames of var/samples/vtest.avi, JPEG-encoded once before the run
(`--synthetic`: moving boxes from agent.sources' synthetic scene), cycled. Each stream is one
DetectStream call sending on a fixed schedule (open loop: a late frame is sent at once, never
skipped), so when the streams together outpace the detector the server drops their oldest
waiting frames, as it would for cameras.

For every configuration a fresh server process is started (`edge-agent serve --listen
127.0.0.1:0 --max-batch B --batch-window-ms W`), warmed up with one Detect, loaded for
`--duration` seconds, and stopped. Reported per configuration: delivered fps (frames answered
with detections, per second; total and per stream), dropped frames, and the latency of answered
frames (send to answer, client side) p50/p95/p99, plus the server's batch count and mean batch.

`--sweep 0,5,10,20` runs one configuration without batching (`--max-batch 1`) and then
`--max-batch B` at each window, to show throughput against latency. Writes JSON (stdout, or --out).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from report import write_report


def encoded_frames(video: Path | None, count: int, quality: int = 85) -> list[bytes]:
    import cv2

    if video is None:
        from edgefleet.agent.sources import open_source

        source = open_source(f"synthetic://768x576?objects=8&frames={count}")
        source.start()
        images = []
        while (frame := source.read(timeout=10)) is not None:
            images.append(frame.image)
        source.stop()
    else:
        cap = cv2.VideoCapture(str(video))
        images = []
        while len(images) < count:
            ok, image = cap.read()
            if not ok:
                break
            images.append(image)
        cap.release()
    if not images:
        raise SystemExit(f"no frames from {video or 'the synthetic scene'}")
    return [cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes() for image in images]


def start_server(max_batch: int, window_ms: float, stream_queue: int, threads: int | None):
    cmd = [sys.executable, "-m", "edgefleet.agent.cli", "--log-level", "warning", "serve", "--listen", "127.0.0.1:0",
           "--max-batch", str(max_batch), "--batch-window-ms", str(window_ms), "--stream-queue", str(stream_queue)]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"server did not start: {proc.stderr.read()[-2000:]}")
    return proc, json.loads(line)["serving"]


def stop_server(proc) -> dict:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    if proc.returncode != 0:
        raise SystemExit(f"server failed ({proc.returncode}): {err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1), "p99": round(float(p99), 1)}


async def load(address: str, frames: list[bytes], streams: int, fps: float, duration: float) -> dict:
    import grpc

    from edgefleet.v1 import inference_pb2, inference_pb2_grpc

    async with grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        first = inference_pb2.DetectRequest(image=inference_pb2.Image(encoded=frames[0]))
        await stub.Detect(first, timeout=60)  # warm: the model is loaded and the first call done
        t0 = time.monotonic() + 0.2
        end = t0 + duration

        async def one(k: int) -> dict:
            sent: dict[int, float] = {}
            latencies: list[float] = []
            counts = {"sent": 0, "answered": 0, "dropped": 0, "errors": 0}
            start = t0 + k / (fps * streams)  # streams spread over one frame interval

            async def requests():
                i = 0
                while (due := start + i / fps) < end:
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    frame = inference_pb2.StreamFrame(stream_id=f"s{k}", frame_index=i,
                                                      image=inference_pb2.Image(encoded=frames[(i + k) % len(frames)]))
                    sent[i] = time.monotonic()
                    counts["sent"] += 1
                    yield frame
                    i += 1

            call = stub.DetectStream(requests(), timeout=duration + 120)
            server_dropped = 0
            async for result in call:
                now = time.monotonic()
                if result.error.code == 8:
                    counts["dropped"] += 1
                elif result.error.code:
                    counts["errors"] += 1
                else:
                    counts["answered"] += 1
                    if sent[result.frame_index] < end:
                        latencies.append((now - sent[result.frame_index]) * 1000)
                server_dropped = result.dropped
            return {"stream": f"s{k}", **counts, "server_dropped": server_dropped,
                    "delivered_fps": round(counts["answered"] / duration, 2), "latencies": latencies}

        per_stream = await asyncio.gather(*(one(k) for k in range(streams)))
    latencies = [ms for s in per_stream for ms in s["latencies"]]
    for s in per_stream:
        s["latency_ms"] = percentiles(s.pop("latencies"))
    return {
        "offered_fps": round(streams * fps, 1),
        "delivered_fps": round(sum(s["answered"] for s in per_stream) / duration, 2),
        "sent": sum(s["sent"] for s in per_stream),
        "answered": sum(s["answered"] for s in per_stream),
        "dropped": sum(s["dropped"] for s in per_stream),
        "errors": sum(s["errors"] for s in per_stream),
        "latency_ms": percentiles(latencies),
        "per_stream_delivered_fps": {"min": min(s["delivered_fps"] for s in per_stream),
                                     "max": max(s["delivered_fps"] for s in per_stream)},
        "per_stream": per_stream,
    }


def run_config(label: str, max_batch: int, window_ms: float, args, frames: list[bytes]) -> dict:
    proc, address = start_server(max_batch, window_ms, args.stream_queue, args.threads)
    try:
        result = asyncio.run(load(address, frames, args.streams, args.fps, args.duration))
    finally:
        if proc.poll() is None:
            server = stop_server(proc)
    run = {"label": label, "max_batch": max_batch, "window_ms": window_ms, "streams": args.streams, "fps": args.fps,
           "duration_s": args.duration, **result,
           "server": {"batches": server["batches"], "mean_batch": server["mean_batch"],
                      "served_frames": server["served_frames"], "dropped": server["served_dropped"]}}
    lat = run["latency_ms"]
    print(f"{label:>22}: offered {run['offered_fps']:6.1f} fps, delivered {run['delivered_fps']:6.2f} fps "
          f"(per stream {run['per_stream_delivered_fps']['min']:.2f}-{run['per_stream_delivered_fps']['max']:.2f}), "
          f"dropped {run['dropped']}, latency p50/p95/p99 {lat['p50']}/{lat['p95']}/{lat['p99']} ms, "
          f"mean batch {server['mean_batch']}", file=sys.stderr, flush=True)
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--fps", type=float, default=5.0, help="frames per second per stream")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per configuration")
    parser.add_argument("--window-ms", type=float, default=5.0, help="batch window (without --sweep)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--stream-queue", type=int, default=2, help="the server's --stream-queue")
    parser.add_argument("--sweep", default="", help="comma-separated windows (ms): no batching, then each window")
    parser.add_argument("--video", type=Path, default=ROOT / "var" / "samples" / "vtest.avi")
    parser.add_argument("--synthetic", action="store_true", help="synthetic frames instead of --video")
    parser.add_argument("--frames", type=int, default=100, help="distinct frames, cycled")
    parser.add_argument("--threads", type=int, default=None, help="the server's --threads")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    frames = encoded_frames(None if args.synthetic else args.video, args.frames)
    if args.sweep:
        windows = [float(w) for w in args.sweep.split(",")]
        configs = [("no batching", 1, 0.0)] + [(f"batch {args.max_batch}, {w:g} ms", args.max_batch, w)
                                              for w in windows]
    else:
        configs = [(f"batch {args.max_batch}, {args.window_ms:g} ms", args.max_batch, args.window_ms)]
    runs = [run_config(label, b, w, args, frames) for label, b, w in configs]
    write_report({
        "benchmark": "inference_stress",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
        "frames": "synthetic" if args.synthetic else str(args.video),
        "jpeg_bytes_mean": int(np.mean([len(f) for f in frames])),
        "runs": runs,
    }, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
