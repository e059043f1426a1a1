"""`edgefleet snapshot` and `frame`: the JPEGs of FleetControl.GetSnapshot and GetFrame, written to a file.

    edgefleet snapshot 1764979200123-a1b2c3 -o person.jpg            # its best crop
    edgefleet snapshot 1764979200123-a1b2c3 --frame -o scene.jpg     # the frame with its box, zones and lines
    edgefleet frame cam-07-9f1e2d cam0 -o now.jpg --max-width 1280   # the stream's latest frame, asked now

A file that exists is kept unless --force; `-o -` writes the JPEG to stdout.
"""
from __future__ import annotations

import argparse
import sys

import grpc

from edgefleet.v1 import fleet_pb2, types_pb2

from .channel import add_connection_arguments
from .cli_common import CliError, format_time, print_json, write_output
from .convert import to_json_dict


def describe(snapshot: types_pb2.Snapshot, where: str) -> str:
    what = f"{snapshot.kind} of {snapshot.object_id}" if snapshot.object_id else f"{snapshot.kind} frame"
    label = f" ({snapshot.label} {snapshot.score:.2f})" if snapshot.label else ""
    when = format_time(snapshot.time.seconds + snapshot.time.nanos / 1e9)
    return (f"wrote {where}: {len(snapshot.jpeg)} bytes, {what}{label}, device {snapshot.device_id} "
            f"stream {snapshot.stream_id}, {when}")


def save(snapshot: types_pb2.Snapshot, args) -> int:
    """Write the JPEG and say so: a line on stderr, or with --json every field but the bytes on stdout."""
    if args.json and args.output == "-":
        raise CliError("--json prints to stdout: write the JPEG to a file (-o FILE)")
    where = write_output(args.output, snapshot.jpeg, args.force)
    if args.json:
        data = to_json_dict(snapshot)
        data.pop("jpeg", None)
        print_json({**data, "bytes": len(snapshot.jpeg), "file": where})
    else:
        print(describe(snapshot, where), file=sys.stderr)
    return 0


def cmd_snapshot(args) -> int:
    from .cli import control_stub

    request = fleet_pb2.GetSnapshotRequest(object_id=args.object_id, kind="frame" if args.frame else "crop",
                                           device_id=args.device or "")
    with control_stub(args, "GetSnapshot") as stub:
        try:
            snapshot = stub.GetSnapshot(request, timeout=args.timeout)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
            raise CliError(f"no {request.kind} snapshot of object {args.object_id}: {err.details()}") from err
    return save(snapshot, args)


def cmd_frame(args) -> int:
    from .cli import control_stub

    if not 0 < args.wait <= 60:
        raise CliError(f"--wait must be within 0..60 seconds, got {args.wait:g}")
    if args.max_width < 0:
        raise CliError(f"--max-width must be >= 0 (0: 640), got {args.max_width}")
    request = fleet_pb2.GetFrameRequest(device_id=args.device_id, stream_id=args.stream_id or "",
                                        max_width=args.max_width, timeout_ms=int(args.wait * 1000))
    with control_stub(args, "GetFrame") as stub:
        try:
            snapshot = stub.GetFrame(request, timeout=args.wait + args.timeout)
        except grpc.RpcError as err:
            problem = frame_error(err)
            if problem is None:
                raise
            raise problem from err
    return save(snapshot, args)


def frame_error(err: grpc.RpcError) -> CliError | None:
    """What the device's side of GetFrame said, as a CliError; None for anything else (the controller
    unreachable), which the usual handling explains."""
    details = err.details() or ""
    code = err.code()
    if code == grpc.StatusCode.UNAVAILABLE and details.startswith("device "):
        return CliError(f"{details} (is its agent running? `edgefleet devices` shows its status)")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and details.startswith("device "):
        return CliError(f"{details} (a busy device may need a longer --wait)")
    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
        return CliError(f"frame: {details}")
    return None


def _output_args(p: argparse.ArgumentParser) -> None:
    add_connection_arguments(p)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the controller")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the JPEG to write (-: stdout)")
    p.add_argument("--force", action="store_true", help="replace FILE when it exists")
    p.add_argument("--json", action="store_true", help="print the snapshot's fields (not its bytes) as JSON")


def add_picture_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("snapshot", help="write an object's best crop (or, --frame, its annotated frame) as a JPEG")
    p.add_argument("object_id", metavar="OBJECT_ID", help="as `edgefleet objects` shows it")
    p.add_argument("--frame", action="store_true", help="the downscaled frame with its box, zones and lines")
    p.add_argument("--device", metavar="ID", help="needed only when two devices have an object with this id")
    _output_args(p)
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser("frame", help="ask a device for a stream's latest annotated frame and write it as a JPEG")
    p.add_argument("device_id", metavar="DEVICE")
    p.add_argument("stream_id", metavar="STREAM", nargs="?", help="default: the device's first stream")
    p.add_argument("--max-width", type=int, default=0, metavar="PX", help="downscale to this width (default 640)")
    p.add_argument("--wait", type=float, default=5.0, metavar="S", help="seconds the device has to answer (default 5)")
    _output_args(p)
    p.set_defaults(func=cmd_frame)
