"""`edgefleet detect`: what the detector sees in an image or a video, without writing code.

    edgefleet detect bus.jpg                                    # the bundled detector, here
    edgefleet detect bus.jpg --save bus-boxes.jpg --json        # every field as JSON, and a picture
    edgefleet detect clip.mp4 --server cam-07:50052 --token T   # an `edge-agent serve` detects

With `--server` an image goes to InferenceService.Detect and a video's frames to DetectStream
(tracked: track ids from the server's ByteTrack for this call's stream), at most WINDOW frames in
flight so the server never drops one; without it the bundled detector (or `--model`) runs in this
process, frame by frame, untracked. Output: per frame a header line and a table (label, score,
box), or with `--json` one JSON object per frame per line. `--save` writes the image with its boxes
drawn; for a video, the annotated video (MJPG, or mp4v for a .mp4 name) at the video's frame rate.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgefleet.common.addresses import host_port_arg
from edgefleet.common.annotate import Box, draw

from .cli_common import CliError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
STREAM_ID = "edgefleet-detect"
WINDOW = 2
"""Frames of a video in flight to the server at once: within its default --stream-queue, so none is dropped."""


@dataclass
class Found:
    label: str
    class_id: int
    score: float
    box: dict[str, float]  # x1, y1, x2, y2 in the frame's pixels
    track_id: int = 0
    predicted: bool = False


@dataclass
class FrameResult:
    frame_index: int
    width: int
    height: int
    detections: list[Found] = field(default_factory=list)
    error: str = ""
    server_ms: float = 0.0


def add_detect_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="detect objects in an image or a video (here, or on an edge-agent serve)")
    p.add_argument("input", type=Path, metavar="IMAGE|VIDEO", help="an image (.jpg .png ...) or a video file")
    p.add_argument("--server", type=host_port_arg("--server", as_text=True), metavar="HOST:PORT",
                   help="call this `edge-agent serve` InferenceService (default: the detector runs here)")
    p.add_argument("--token", default=os.environ.get("EDGEFLEET_INFERENCE_TOKEN"),
                   help="the service's token (default $EDGEFLEET_INFERENCE_TOKEN)")
    p.add_argument("--save", type=Path, metavar="FILE",
                   help="write the image (or video) with boxes and labels drawn")
    p.add_argument("--json", action="store_true", help="one JSON object per frame (every field, numbers as numbers)")
    p.add_argument("--model", type=Path, metavar="FILE", help="model file for local detection (default: bundled)")
    p.add_argument("--conf", type=float, default=0.25, metavar="X",
                   help="show detections scoring at least X (default 0.25, the service's own floor)")
    p.add_argument("--max-frames", type=int, default=0, metavar="N", help="a video's first N frames (0: all)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds to wait for the server")
    p.set_defaults(func=cmd_detect)


def cmd_detect(args) -> int:
    if args.server is None and args.token:
        args.token = None  # the environment's token means nothing to local detection
    if args.model is not None and args.server is not None:
        raise CliError("--model applies to local detection; the server runs its own model")
    is_image = _check_input(args.input)
    frames = _image_frames(args.input) if is_image else _video_frames(args.input, args.max_frames)
    detect = _server_detect(args, is_image) if args.server else _local_detect(args)
    saver = _Saver(args.save, is_image, _fps(args.input) if not is_image else 0.0) if args.save else None
    try:
        for image, result in detect(frames):
            result.detections = [d for d in result.detections if d.score >= args.conf]
            _print(result, args.json)
            if saver is not None:
                saver.add(image, result)
    finally:
        if saver is not None:
            saver.close()
    return 0


# ---- input ----

def _check_input(path: Path) -> bool:
    """True for an image, False for a video; CliError when it is missing."""
    if not path.exists():
        raise CliError(f"{path}: no such file")
    if path.is_dir():
        raise CliError(f"{path}: a folder; give one image or video file")
    return path.suffix.lower() in IMAGE_SUFFIXES


def _image_frames(path: Path) -> Iterator[tuple[int, np.ndarray]]:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise CliError(f"{path}: not an image OpenCV can decode")
    return iter([(0, image)])


def _video_frames(path: Path, max_frames: int) -> Iterator[tuple[int, np.ndarray]]:
    """The frames, the first decoded now (CliError when none can be)."""
    cap = cv2.VideoCapture(str(path))
    ok, first = cap.read() if cap.isOpened() else (False, None)
    if not ok:
        cap.release()
        raise CliError(f"{path}: not a video OpenCV can decode (or empty)")

    def frames() -> Iterator[tuple[int, np.ndarray]]:
        image: np.ndarray | None = first
        index = 0
        try:
            while image is not None and (not max_frames or index < max_frames):
                yield index, image
                index += 1
                ok, image = cap.read()
                image = image if ok else None
        finally:
            cap.release()
    return frames()


def _fps(path: Path) -> float:
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return fps if 1 <= fps <= 240 else 25.0


# ---- detection: here ----

Detect = Callable[[Iterator[tuple[int, np.ndarray]]], Iterator[tuple[np.ndarray, FrameResult]]]


def _local_detect(args) -> Detect:
    from edgefleet.models import load_default_detector, load_detector
    from edgefleet.models.errors import ModelError

    options = {"confidence_threshold": args.conf}
    try:
        detector = load_detector(args.model, **options) if args.model else load_default_detector(**options)
    except (ModelError, OSError) as err:
        raise CliError(f"model {args.model or 'bundled'}: {err}") from err

    def run(frames: Iterator[tuple[int, np.ndarray]]) -> Iterator[tuple[np.ndarray, FrameResult]]:
        with detector:
            for index, image in frames:
                dets = detector.detect(image)
                found = [Found(detector.names[int(c)], int(c), round(float(s), 4),
                               dict(zip(("x1", "y1", "x2", "y2"), (round(float(v), 1) for v in box))))
                         for box, s, c in zip(dets.xyxy, dets.confidence, dets.class_id)]
                yield image, FrameResult(index, image.shape[1], image.shape[0], found)
    return run


# ---- detection: on an edge-agent serve ----

def _server_detect(args, is_image: bool) -> Detect:
    import grpc

    from edgefleet.fleet.channel import open_channel
    from edgefleet.v1 import inference_pb2, inference_pb2_grpc

    def run(frames: Iterator[tuple[int, np.ndarray]]) -> Iterator[tuple[np.ndarray, FrameResult]]:
        with open_channel(args.server, token=args.token) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            try:
                if is_image:
                    index, image = next(frames)
                    request = inference_pb2.DetectRequest(image=inference_pb2.Image(encoded=args.input.read_bytes()))
                    reply = stub.Detect(request, timeout=args.timeout)
                    yield image, FrameResult(index, reply.width, reply.height, _found(reply.detections))
                else:
                    yield from _stream(stub, frames)
            except grpc.RpcError as err:
                raise _rpc_error(err, args.server) from err
    return run


def _stream(stub, frames: Iterator[tuple[int, np.ndarray]]) -> Iterator[tuple[np.ndarray, FrameResult]]:
    """DetectStream over the frames, WINDOW in flight; (image, result) in frame order."""
    from edgefleet.v1 import inference_pb2

    window, sent = threading.Semaphore(WINDOW), {}
    started, done, finished = threading.Event(), threading.Event(), threading.Event()

    def requests():  # on gRPC's thread; must be over before this process exits (else gRPC aborts it)
        started.set()
        try:
            for index, image in frames:
                window.acquire()
                if done.is_set():
                    return
                _, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
                sent[index] = image
                yield inference_pb2.StreamFrame(stream_id=STREAM_ID, frame_index=index,
                                                image=inference_pb2.Image(encoded=data.tobytes()))
        finally:
            finished.set()

    call = stub.DetectStream(requests())
    try:
        for reply in call:
            window.release()
            result = FrameResult(reply.frame_index, reply.width, reply.height, _found(reply.detections),
                                 reply.error.message if reply.HasField("error") else "", round(reply.server_ms, 2))
            yield sent.pop(reply.frame_index), result
    finally:
        done.set()
        window.release()  # wakes the request thread, which sees `done` and stops
        call.cancel()
        if started.is_set():
            finished.wait(5.0)


def _found(detections) -> list[Found]:
    return [Found(d.label, d.class_id, round(d.score, 4),
                  {"x1": round(d.box.x1, 1), "y1": round(d.box.y1, 1), "x2": round(d.box.x2, 1),
                   "y2": round(d.box.y2, 1)}, d.track_id, d.predicted)
            for d in detections]


def _rpc_error(err, address: str) -> CliError:
    import grpc

    code, details = err.code(), err.details() or ""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return CliError(f"the inference service at {address} refused the call: {details} "
                        "(give its token with --token or $EDGEFLEET_INFERENCE_TOKEN)")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return CliError(f"cannot reach the inference service at {address}: {details or code.name}")
    return CliError(f"the inference service at {address} answered {code.name}: {details}")


# ---- output ----

def _print(result: FrameResult, as_json: bool) -> None:
    if as_json:
        print(json.dumps(asdict(result)))
    else:
        note = f", error: {result.error}" if result.error else ""
        print(f"frame {result.frame_index} ({result.width}x{result.height}): {len(result.detections)} objects{note}")
        for d in result.detections:
            track = f"  track {d.track_id}" if d.track_id else ""
            box = d.box
            print(f"  {d.label:<14} {d.score:5.2f}  ({box['x1']:.0f}, {box['y1']:.0f}, {box['x2']:.0f}, "
                  f"{box['y2']:.0f}){track}")
    sys.stdout.flush()


class _Saver:
    """The annotated image, or the annotated video frame by frame."""

    def __init__(self, path: Path, is_image: bool, fps: float):
        self.path, self.is_image, self.fps = path, is_image, fps
        self._writer: cv2.VideoWriter | None = None

    def add(self, image: np.ndarray, result: FrameResult) -> None:
        drawn = draw(image, [Box((d.box["x1"], d.box["y1"], d.box["x2"], d.box["y2"]), d.label, d.score, d.track_id)
                             for d in result.detections])
        if self.is_image:
            if not cv2.imwrite(str(self.path), drawn):
                raise CliError(f"--save {self.path}: cannot write an image there (a known image suffix?)")
            return
        if self._writer is None:
            fourcc = cv2.VideoWriter.fourcc(*("mp4v" if self.path.suffix.lower() == ".mp4" else "MJPG"))
            self._writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (drawn.shape[1], drawn.shape[0]))
            if not self._writer.isOpened():
                raise CliError(f"--save {self.path}: cannot write a video there")
        self._writer.write(drawn)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
